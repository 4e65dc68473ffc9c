#!/usr/bin/env python3
"""test_label_e2e.py - the main command as a user runs it: `facemill label` with the
shipped defaults (no model setting anywhere), the real pipeline in real worker
processes, checked field by field against `facemill predict`.

Inputs: the sample photos, and photos made from them here (a mirrored and scaled copy
on a larger canvas, two photos side by side, a grayscale copy, an EXIF-free
progressive JPEG), two photos without faces (noise, a flat wall) and broken files (a
truncated JPEG, a PNG, a text file named .jpg, an empty file).

Run twice with an empty HOME: once from the checkout root and once from an unrelated
directory. Each run must
  - exit 1 (some images failed: the broken ones), store one row per input;
  - give every image that predict labels the same faces: box, score, landmarks, age,
    age_std, gender and its probabilities, ethnicity and its probabilities (to the
    digits predict prints);
  - give the broken files error rows with the same reason as predict, at attempt 1
    (a worker that died on them would have been retried);
  - find no face in the faceless photos and at least one in every photo made from a
    sample.

Usage: test_label_e2e.py --bin BIN --src SRC
Exit 0 pass, 1 fail.
"""
import argparse
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fm_testlib import Checks, close, user_env  # noqa: E402

check = Checks("test_label_e2e")


def make_inputs(samples, d):
    """Copies the samples and writes the generated photos and broken files into d;
    returns the names of those that must have faces and those that must not."""
    os.makedirs(d)
    with_faces, without = [], []
    for s in sorted(os.listdir(samples)):
        shutil.copy(os.path.join(samples, s), d)
        with_faces.append(s)
    a = Image.open(os.path.join(samples, "sample1.jpg")).convert("RGB")
    b = Image.open(os.path.join(samples, "sample2.jpg")).convert("RGB")
    # mirrored, scaled to 60% and pasted off-centre on a larger canvas
    m = a.transpose(Image.FLIP_LEFT_RIGHT)
    m = m.resize((int(m.width * 0.6), int(m.height * 0.6)), Image.BILINEAR)
    canvas = Image.new("RGB", (m.width + 700, m.height + 300), (90, 110, 70))
    canvas.paste(m, (500, 200))
    canvas.save(os.path.join(d, "gen_mirror_canvas.jpg"), quality=90)
    # side by side, different heights
    w = Image.new("RGB", (a.width + b.width, max(a.height, b.height)), (255, 255, 255))
    w.paste(a, (0, 0))
    w.paste(b, (a.width, 0))
    w = w.resize((w.width // 2, w.height // 2), Image.BILINEAR)
    w.save(os.path.join(d, "gen_side_by_side.jpg"), quality=88)
    # grayscale, and a progressive JPEG
    b.convert("L").save(os.path.join(d, "gen_gray.jpg"), quality=85)
    a.save(os.path.join(d, "gen_progressive.jpg"), quality=80, progressive=True)
    with_faces += ["gen_mirror_canvas.jpg", "gen_side_by_side.jpg", "gen_gray.jpg",
                   "gen_progressive.jpg"]
    # no faces: noise and a flat wall
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(
        os.path.join(d, "nofaces_noise.jpg"), quality=90)
    Image.new("RGB", (800, 600), (200, 190, 180)).save(os.path.join(d, "nofaces_wall.jpg"))
    without += ["nofaces_noise.jpg", "nofaces_wall.jpg"]
    # broken
    data = open(os.path.join(samples, "sample3.jpg"), "rb").read()
    open(os.path.join(d, "bad_truncated.jpg"), "wb").write(data[: len(data) // 3])
    buf = io.BytesIO()
    b.resize((64, 64)).save(buf, format="PNG")
    open(os.path.join(d, "bad_png.jpg"), "wb").write(buf.getvalue())
    open(os.path.join(d, "bad_text.jpg"), "w").write("not an image\n")
    open(os.path.join(d, "bad_empty.jpg"), "wb").close()
    broken = ["bad_truncated.jpg", "bad_png.jpg", "bad_text.jpg", "bad_empty.jpg"]
    return with_faces, without, broken


def same_face(e, p):
    """An exported face (e) against predict's (p), every field."""
    flat_marks = [c for pt in p["landmarks"] for c in pt]
    return (len(e["box"]) == 4 and all(close(u, v) for u, v in zip(e["box"], p["box"])) and
            close(e["score"], p["score"]) and
            len(e["landmarks"]) == 10 and
            all(close(u, v) for u, v in zip(e["landmarks"], flat_marks)) and
            close(e["age"], p["age"]) and close(e["age_std"], p["age_std"]) and
            e["gender"] == p["gender"] and
            close(e["gender_probs"][0], p["gender_probs"]["male"]) and
            close(e["gender_probs"][1], p["gender_probs"]["female"]) and
            e["race"] == p["race"] and
            all(close(e["race_probs"][i], p["race_probs"][k]) for i, k in
                enumerate(("White", "Black", "Asian", "Indian", "Others"))))


def run_case(tag, fm, inputs, cwd, env, want, with_faces, without, broken):
    db = os.path.join(tempfile.mkdtemp(prefix="facemill-e2e-db-"), "r.db")
    try:
        p = subprocess.run([fm, "label", inputs, "-o", db, "-j", "2"], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=600)
        check(p.returncode == 1, "%s: label exits 1 (broken inputs failed), got %d: %s" %
              (tag, p.returncode, p.stderr[-1500:]))
        total = len(with_faces) + len(without) + len(broken)
        check("%d images: %d committed" % (total, total) in p.stderr,
              "%s: every input committed: %s" % (tag, p.stderr[-300:]))
        p = subprocess.run([fm, "export", db], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=120)
        check(p.returncode == 0, "%s: export: %s" % (tag, p.stderr))
        got = {}
        for line in p.stdout.splitlines():
            o = json.loads(line)
            got[os.path.basename(o["source"])] = o
        check(len(got) == total, "%s: %d rows, want %d" % (tag, len(got), total))
        nfaces = 0
        for name in with_faces + without:
            e, w = got.get(name), want.get(name)
            if not check(w is not None, "%s: predict answered %s" % (tag, name)):
                continue
            if not check(e is not None and "error" not in e,
                         "%s: %s labelled: %s" % (tag, name, e)):
                continue
            check(e["width"] == w["width"] and e["height"] == w["height"],
                  "%s: %s size" % (tag, name))
            ef, pf = e["faces"], w["faces"]
            check(len(ef) == len(pf), "%s: %s: %d faces, predict %d" % (tag, name, len(ef),
                                                                        len(pf)))
            if name in with_faces:
                check(len(ef) >= 1, "%s: %s: a face" % (tag, name))
            else:
                check(len(ef) == 0, "%s: %s: no face" % (tag, name))
            for i, (a, b) in enumerate(zip(ef, pf)):
                nfaces += 1
                check(same_face(a, b), "%s: %s face %d: export %s, predict %s" %
                      (tag, name, i, a, b))
        check(nfaces >= 15, "%s: %d faces compared" % (tag, nfaces))
        for name in broken:
            e, w = got.get(name), want.get(name, {})
            # the same reason (predict prefixes it with the path; the two schemas
            # name the code differently)
            check(e is not None and "error" in e and "error" in w and
                  e["error"]["text"] and w["error"]["message"].endswith(e["error"]["text"]),
                  "%s: %s: error row like predict's: %s / %s" % (tag, name, e, w.get("error")))
        # at attempt 1: no worker died on them (a dead worker's job is retried)
        con = sqlite3.connect(db)
        cols = [r[1] for r in con.execute("PRAGMA table_info(images)")]
        if check("attempt" in cols, "%s: images has an attempt column (%s)" % (tag, cols)):
            rows = con.execute("SELECT source, attempt FROM images").fetchall()
            retried = [(s, n) for s, n in rows if n != 1]
            check(not retried and len(rows) == total,
                  "%s: every job ran once: %s" % (tag, retried))
        con.close()
    finally:
        shutil.rmtree(os.path.dirname(db), ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--src", required=True)
    a = ap.parse_args()
    fm = os.path.join(os.path.abspath(a.bin), "facemill")
    src = os.path.abspath(a.src)
    samples = os.path.join(src, "models", "cache", "samples")
    if not os.path.isdir(samples):
        print("test_label_e2e: %s is missing: run models/fetch (ops/test does)" % samples,
              file=sys.stderr)
        return 1
    tmp = tempfile.mkdtemp(prefix="facemill-e2e-")
    try:
        home = os.path.join(tmp, "home")
        os.makedirs(home)
        inputs = os.path.join(tmp, "photos")
        with_faces, without, broken = make_inputs(samples, inputs)
        env = user_env(home)
        names = sorted(os.listdir(inputs))
        p = subprocess.run([fm, "predict"] + [os.path.join(inputs, n) for n in names],
                           cwd=src, env=env, capture_output=True, text=True, timeout=600)
        want = {}
        for line in p.stdout.splitlines():
            o = json.loads(line)
            want[os.path.basename(o["path"])] = o
        check(sorted(want) == names, "predict answers every input: exit %d: %s" %
              (p.returncode, p.stderr[-1000:]))
        for n in broken:
            check("error" in want.get(n, {}), "predict: %s is an error" % n)
        for tag, cwd in (("checkout root", src), ("unrelated directory", tmp)):
            run_case(tag, fm, inputs, cwd, env, want, with_faces, without, broken)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
