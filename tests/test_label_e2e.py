#!/usr/bin/env python3
"""test_label_e2e.py - the main command as a user runs it: `facemill label` with the
shipped defaults (no model setting anywhere), the real pipeline in real worker
processes, checked field by field against `facemill predict` and `facemill detect`:
the three describe a photo in one schema (proto/RESULTS.md).

Inputs: the sample photos, and photos made from them here (a mirrored and scaled copy
on a larger canvas, two photos side by side, a grayscale copy, an EXIF-free
progressive JPEG, a PNG, a lossless WebP and a sideways TIFF with an Orientation tag
holding samples' pixels, a HEIC stored on its side with a HEIF rotation as phones
store portrait photos, an AVIF), two photos
without faces (noise, a flat wall) and broken files (a truncated JPEG, a GIF named
.jpg, a truncated PNG, a text file named .jpg, an empty file).

predict and detect run once; label runs twice with an empty HOME, once from the
checkout root and once from an unrelated directory. Checked:
  - every line of the three commands is an image object of schema 2 with the same
    keys (source, width, height, error, faces, and each command's own);
  - detect and predict find the same faces with the same box, score and landmarks,
    number for number (the same text); detect's faces carry no attributes;
  - label exits 1 (some images failed: the broken ones) and stores one row per input;
  - its export gives every image the same size and the same faces as predict: the
    same fields, detection equal to the last digit, age, age_std and the
    probabilities within relative 1e-5 (the backbone embeds a different mix of faces
    together in a worker, so float sums round differently), the same gender and race;
  - the broken files are errors with the same code, name and text in all three, at
    attempt 1 in the database (a worker that died on them would have been retried);
  - no face in the faceless photos and at least one in every photo made from a
    sample; the PNG, the WebP and the TIFF have the faces of the JPEGs whose pixels
    they hold,
    the HEIC and the AVIF their JPEG's size and faces (boxes overlapping by 0.7);
  - the CSV export holds the JSONL export's values under the flattened field names
    (box.x1, landmarks.left_eye.x, gender_probs.male, ...), one row per face.

First, with decode-only workers (no models; --only hard_inputs runs just this): inputs
that cannot be read (a file nobody may open, run as nobody when the test is root; a
listed path that is missing; dangling links; files and archive members too large for
a message; a tar cut inside a member and one cut inside a header; a damaged zip; a
text file named .tar) each end as an io error row with their reason, once, also after
a rerun; a folder nobody may list and one nested too deep are warnings and exit 1;
names with escape sequences reach stderr escaped, and "(null)" never; -o naming a
missing folder or a file that is no database, and a missing INPUT, are usage errors
(exit 2, one line) that create nothing; eleven runs of the same folder of 8 images
each stop their workers at once (none waits out 15 s). Then reruns (decode-only
workers): a failed row stays, and with --retry-failed is labelled again and replaced;
a changed file's new row replaces its old one; a folder's zip and tar.gz are opened;
a second label on a database another one holds refuses at once.

Usage: test_label_e2e.py --bin BIN --src SRC [--only hard_inputs]
Exit 0 pass, 1 fail.
"""
import csv
import glob
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fm_testlib import Checks, dir_args, face_diff, flat, samples_dir, user_env  # noqa: E402

check = Checks("test_label_e2e")


def make_inputs(samples, d, heif_tool):
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
    # the same pixels as two of the samples, as PNG (with an alpha channel) and as
    # lossless WebP: their faces must be the JPEGs' own (main() compares them)
    b.convert("RGBA").save(os.path.join(d, "gen_sample2.png"))
    a.save(os.path.join(d, "gen_sample1.webp"), lossless=True)
    # and a scan-like LZW TIFF stored on its side with the Orientation tag (6: turn
    # clockwise to view) that turns it back
    e = Image.open(os.path.join(samples, "sample5.jpg")).convert("RGB")
    e.transpose(Image.ROTATE_90).save(os.path.join(d, "gen_sample5.tif"),
                                      compression="tiff_lzw", tiffinfo={274: 6})
    with_faces += ["gen_sample2.png", "gen_sample1.webp", "gen_sample5.tif"]
    # HEIC stored on its side with a HEIF rotation that turns it back (a phone's
    # portrait photo), and AVIF: lossy, so main() compares their faces' boxes
    for name, args in (("gen_sample3.heic", ["--turn", "1"]), ("gen_sample4.avif", ["--av1"])):
        orig = os.path.join(samples, name[4:].split(".")[0] + ".jpg")
        p = subprocess.run([heif_tool, orig, os.path.join(d, name)] + args,
                           capture_output=True, text=True, timeout=300)
        check(p.returncode == 0, "heif_tool %s: %s" % (name, p.stderr))
        with_faces.append(name)
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
    b.resize((64, 64)).save(buf, format="GIF")
    open(os.path.join(d, "bad_gif.jpg"), "wb").write(buf.getvalue())
    buf = io.BytesIO()
    b.save(buf, format="PNG")
    open(os.path.join(d, "bad_truncated.png"), "wb").write(buf.getvalue()[:200000])
    open(os.path.join(d, "bad_text.jpg"), "w").write("not an image\n")
    open(os.path.join(d, "bad_empty.jpg"), "wb").close()
    broken = ["bad_truncated.jpg", "bad_gif.jpg", "bad_truncated.png", "bad_text.jpg",
              "bad_empty.jpg"]
    return with_faces, without, broken


# Attributes of a worker's face may differ from predict's in the 6th or 7th digit.
REL = 1e-5
DETECTION = ("box", "score", "landmarks")
ATTRIBUTES = ("age", "age_std", "gender", "gender_probs", "race", "race_probs")
IMAGE_KEYS = ["schema", "source", "width", "height", "error"]


def check_image(tag, o, extra):
    """o is an image object of schema 2 with the common keys, then extra, then faces."""
    keys = IMAGE_KEYS + extra + ["faces"]
    check(list(o) == keys and o["schema"] == 2,
          "%s: %s: keys %s, want %s" % (tag, o.get("source"), list(o), keys))
    check(isinstance(o.get("faces"), list) and
          (o.get("error") is None or (sorted(o["error"]) == ["code", "name", "text"] and
                                      not o["faces"] and o["width"] is None)),
          "%s: %s: error %s with %d faces" % (tag, o.get("source"), o.get("error"),
                                            len(o.get("faces") or [])))


def check_csv(tag, text, objs):
    """The CSV export against the JSONL export: per face a row whose columns are the
    flattened image and face fields with the same values (the same text)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    want = []
    for o in objs:
        image = flat({k: v for k, v in o.items() if k != "faces"})
        if image.get("error") is None:
            image.pop("error", None)
        for i, f in enumerate(o["faces"] or [None]):
            row = dict(image)
            if f is not None:
                row.update(flat(f))
                row["face"] = i
            want.append(row)
    check(len(rows) == len(want), "%s: CSV has %d rows, want %d" % (tag, len(rows),
                                                                    len(want)))
    bad = 0
    for r, w in zip(rows, want):
        missing = [k for k in w if k not in r]
        wrong = [k for k in r if (r[k] != "" and k not in w) or
                 (k in w and r[k] != ("" if w[k] is None else str(w[k])) and
                  not (isinstance(w[k], float) and float(r[k]) == w[k]))]
        if (missing or wrong) and bad < 3:
            check(False, "%s: CSV row %s: missing %s, differing %s" % (
                tag, r.get("source"), missing, [(k, r[k], w.get(k)) for k in wrong]))
        bad += bool(missing or wrong)
    check(bad == 0, "%s: %d CSV rows differ from the JSONL export" % (tag, bad))


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
        objs = [json.loads(line) for line in p.stdout.splitlines()]
        got = {}
        for o in objs:
            check_image(tag + " export", o, ["job_id", "sha256", "model"])
            got[os.path.basename(o["source"])] = o
        check(len(got) == total, "%s: %d rows, want %d" % (tag, len(got), total))
        nfaces = 0
        for name in with_faces + without:
            e, w = got.get(name), want.get(name)
            if not check(w is not None, "%s: predict answered %s" % (tag, name)):
                continue
            if not check(e is not None and e["error"] is None,
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
                diff = face_diff(a, b, REL, DETECTION)
                check(not diff, "%s: %s face %d: export and predict differ: %s" %
                      (tag, name, i, "; ".join(diff)))
        check(nfaces >= 15, "%s: %d faces compared" % (tag, nfaces))
        for name in broken:
            e, w = got.get(name), want.get(name, {})
            check(e is not None and e["error"] and e["error"] == w.get("error") and
                  e["error"]["text"] and e["faces"] == [],
                  "%s: %s: the same error as predict's: %s / %s" %
                  (tag, name, e and e["error"], w.get("error")))
        p = subprocess.run([fm, "export", "--format", "csv", db], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=120)
        check(p.returncode == 0, "%s: export --format csv: %s" % (tag, p.stderr))
        check_csv(tag, p.stdout, objs)
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


def iou(a, b):
    """Intersection over union of two boxes of the result schema."""
    w = min(a["x2"], b["x2"]) - max(a["x1"], b["x1"])
    h = min(a["y2"], b["y2"]) - max(a["y1"], b["y1"])
    inter = max(w, 0) * max(h, 0)
    area = lambda r: (r["x2"] - r["x1"]) * (r["y2"] - r["y1"])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def run_lines(fm, cmd, paths, cwd, env):
    """`facemill CMD PATHS...`: basename -> image object, and the exit status."""
    p = subprocess.run([fm, cmd] + paths, cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600)
    out = {}
    for line in p.stdout.splitlines():
        o = json.loads(line)
        out[os.path.basename(o["source"])] = o
    return out, p


# ---- inputs that cannot be read, and how a run ends ----------------------------------

def label_as(user, fm, args, cwd, env, stdin=None, timeout=300):
    """`facemill label ARGS` (run as the uid user when not None: setpriv, root only);
    the finished process, output as text with bad UTF-8 replaced."""
    cmd = [fm, "label"] + args
    if user is not None:
        cmd = ["setpriv", "--reuid=%d" % user, "--regid=%d" % user, "--clear-groups"] + cmd
    return subprocess.run(cmd, cwd=cwd, env=env, input=stdin, capture_output=True,
                          text=True, errors="replace", timeout=timeout)


def export_rows(fm, db, env):
    """source -> error (None for a labelled image) of every row of db, and the count."""
    p = subprocess.run([fm, "export", db], env=env, capture_output=True, text=True,
                       errors="surrogateescape", timeout=120)
    check(p.returncode == 0, "export %s: %s" % (db, p.stderr))
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    return {o["source"]: o["error"] for o in rows}, len(rows)


def decode_only(*args):
    """`facemill label` arguments for one decode-only worker process (no models), no
    progress."""
    return list(args) + ["-j", "1", "--progress", "none", "--worker-arg", "--decode-only"]


def write_jpeg(path, seed):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=80)


def case_hard_inputs(fm, tmp):
    """`facemill label` (decode-only workers, no models) on inputs that cannot be read:
    each ends as an error row (code 4, io) with its reason and the rest is labelled;
    a folder that cannot be listed or lies too deep is a warning and exit 1; a damaged
    archive is a row, never "(null)"; names reach the terminal escaped; a bad -o or a
    missing INPUT is a usage error before anything starts; a rerun stops its workers
    at once. Each part runs on its own, so each fault shows by itself."""
    base = os.path.join(tmp, "hard")
    home = os.path.join(base, "home")
    photos = os.path.join(base, "photos")
    tree = os.path.join(base, "tree")
    for d in (home, os.path.join(photos, "sub"), os.path.join(tree, "locked")):
        os.makedirs(d)
    env = user_env(home)
    # chmod 000 keeps nobody out but root: as root, the runs are made as nobody
    user = None
    if os.geteuid() == 0:
        probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534",
                                "--clear-groups", fm, "--help"], capture_output=True)
        if probe.returncode == 0:
            user = 65534
        else:
            print("test_label_e2e: %s cannot run as nobody: unreadable files and folders "
                  "are not checked" % fm, file=sys.stderr)
    unreadable = user is not None or os.geteuid() != 0
    for i in range(3):
        write_jpeg(os.path.join(photos, "ok%d.jpg" % i), i)
    write_jpeg(os.path.join(photos, "sub", "deeper.jpg"), 3)
    write_jpeg(os.path.join(photos, "secret.jpg"), 5)
    os.symlink("/nonexistent/target.jpg", os.path.join(photos, "dangling.jpg"))
    evil = "esc\x1b]0;owned\x07\x1b[2J.jpg"
    os.symlink("/nonexistent/other.jpg", os.path.join(photos, evil))
    huge_evil = "huge\x1b[31m.jpg"
    open(os.path.join(photos, huge_evil), "wb").write(os.urandom(300000))
    write_jpeg(os.path.join(base, "listed.jpg"), 8)
    good = os.path.join(base, "good.tar")
    with tarfile.open(good, "w") as t:
        t.add(os.path.join(photos, "ok0.jpg"), "a.jpg")
        t.add(os.path.join(photos, "ok1.jpg"), "member\x1b[31m.jpg")
        big = os.urandom(300000)
        info = tarfile.TarInfo("big\x1b[2J.jpg")
        info.size = len(big)
        t.addfile(info, io.BytesIO(big))
    # the second tree: a folder nobody may list, and damaged archives
    write_jpeg(os.path.join(tree, "fine.jpg"), 9)
    write_jpeg(os.path.join(tree, "locked", "hidden.jpg"), 4)
    cut, cut_head, damaged, notar = (os.path.join(base, n) for n in (
        "cut.tar", "cut_head.tar", "damaged.zip", "not_an_archive.tar"))
    with tarfile.open(cut, "w", format=tarfile.USTAR_FORMAT) as t:
        t.add(os.path.join(photos, "ok0.jpg"), "one.jpg")
        t.add(os.path.join(photos, "ok2.jpg"), "two.jpg")
    data = open(cut, "rb").read()
    two = data.index(b"two.jpg\0")
    open(cut, "wb").write(data[: two + 512 + 100])  # inside two.jpg's bytes
    open(cut_head, "wb").write(data[: two + 200])  # inside two.jpg's header
    open(damaged, "wb").write(b"PK\x03\x04" + b"\xff" * 200)
    open(notar, "w").write("not an archive\n")
    for p in (tmp, base, home, photos, tree):
        os.chmod(p, 0o755)
    if user is not None:
        for root, dirs, files in os.walk(base):
            for n in dirs + files:
                os.lchown(os.path.join(root, n), user, user)
        os.chown(base, user, user)
    os.chmod(os.path.join(photos, "secret.jpg"), 0)
    os.chmod(os.path.join(tree, "locked"), 0)
    common = ["-j", "1", "--progress", "lines", "--worker-arg", "--decode-only",
              "--set", "net.max_msg_size=200000"]
    too_large = "300000 bytes, more than a message takes (134464)"
    files = {
        "args": [photos, good, "-"],
        "stdin": "%s\n%s\n" % (os.path.join(base, "listed.jpg"),
                               os.path.join(base, "gone.jpg")),
        "errors": {
            os.path.join(photos, "dangling.jpg"): "dangling symbolic link",
            os.path.join(photos, evil): "dangling symbolic link",
            os.path.join(photos, huge_evil): too_large,
            good + ":big\x1b[2J.jpg": too_large,
            os.path.join(base, "gone.jpg"): "No such file or directory"},
        "labelled": [os.path.join(photos, n) for n in ("ok0.jpg", "ok1.jpg", "ok2.jpg")] + [
            os.path.join(photos, "sub", "deeper.jpg"), good + ":a.jpg",
            good + ":member\x1b[31m.jpg", os.path.join(base, "listed.jpg")],
        "folders": 0}
    if unreadable:
        files["errors"][os.path.join(photos, "secret.jpg")] = \
            "cannot open: Permission denied"
    else:  # root reads it all the same
        files["labelled"].append(os.path.join(photos, "secret.jpg"))
    folders = {
        "args": [tree, cut, cut_head, damaged, notar],
        "stdin": None,
        "errors": {
            cut + ":two.jpg": "truncated member",
            cut_head: "unreadable archive after one.jpg: ",
            damaged: "unreadable archive",
            notar: "unreadable archive"},
        "labelled": [os.path.join(tree, "fine.jpg"), cut + ":one.jpg",
                     cut_head + ":one.jpg"],
        "folders": 1 if unreadable else 0}
    if not unreadable:
        folders["labelled"].append(os.path.join(tree, "locked", "hidden.jpg"))
    try:
        for part, c in (("files", files), ("folders and archives", folders)):
            db = os.path.join(base, part.split()[0] + ".db")
            for run in ("first", "rerun"):
                p = label_as(user, fm, c["args"] + ["-o", db] + common, base, env,
                             stdin=c["stdin"])
                err, what = p.stderr, "%s, %s" % (part, run)
                total = len(c["errors"]) + len(c["labelled"])
                summary = "%d images: %d committed, %d already stored, %d failed%s" % (
                    total, 0 if run == "rerun" else total, total if run == "rerun" else 0,
                    len(c["errors"]),
                    ", %d folder skipped" % c["folders"] if c["folders"] else "")
                check(p.returncode == 1 and summary in err,
                      "%s: exit 1 and '%s': exit %d: %s" % (what, summary, p.returncode,
                                                            err[-2000:]))
                check("\x1b" not in err and "\x07" not in err and "(null)" not in err,
                      "%s: no raw escape or (null) on the terminal: %r" % (what, err))
                if part == "files" and run == "first":
                    check("esc\\x1b]0;owned\\x07\\x1b[2J.jpg: dangling symbolic link" in err
                          and "huge\\x1b[31m.jpg: " + too_large in err,
                          "%s: evil names shown escaped: %r" % (what, err))
                if c["folders"]:
                    check("%s: skipped: Permission denied" % os.path.join(tree, "locked")
                          in err, "%s: the locked folder is a warning: %s" % (what, err))
                rows, n = export_rows(fm, db, env)
                check(n == total, "%s: %d rows, want %d (one per image)" % (what, n, total))
                for name, text in c["errors"].items():
                    e = rows.get(name)
                    check(e is not None and e.get("code") == 4 and e.get("name") == "io" and
                          str(e.get("text", "")).startswith(text),
                          "%s: %r is an io error row '%s': %s" % (what, name, text, e))
                for name in c["labelled"]:
                    check(name in rows and rows[name] is None,
                          "%s: %r labelled: %s" % (what, name, rows.get(name)))
    finally:
        os.chmod(os.path.join(photos, "secret.jpg"), 0o644)
        os.chmod(os.path.join(tree, "locked"), 0o755)
    # a folder nested too deep: a warning naming it, the rest labelled, exit 1
    deep = os.path.join(base, "deep")
    os.makedirs(deep)
    write_jpeg(os.path.join(deep, "top.jpg"), 6)
    here = os.getcwd()
    os.chdir(deep)
    try:
        for _ in range(260):
            os.mkdir("d")
            os.chdir("d")
        write_jpeg("bottom.jpg", 7)
    finally:
        os.chdir(here)
    ddb = os.path.join(base, "deep.db")
    p = label_as(None, fm, [deep, "-o", ddb, "-j", "1", "--progress", "none",
                            "--worker-arg", "--decode-only"], base, env)
    check(p.returncode == 1 and "%s: folders nested more than 256 levels deep: " % deep
          in p.stderr and "1 images: 1 committed, 0 already stored, 0 failed, 1 folder "
          "skipped" in p.stderr,
          "too deep: a warning, the top labelled, exit 1: exit %d: %s" % (p.returncode,
                                                                          p.stderr[-600:]))
    # a rerun cannot fix these: usage errors, one line naming the file, nothing made
    notes = os.path.join(base, "notes.txt")
    open(notes, "w").write("my notes\n")
    small = os.path.join(photos, "sub")
    for out, why in (("/nonexistent/dir/x.db", "cannot create it: No such file or "
                      "directory"), (notes, "not a facemill results database")):
        p = label_as(None, fm, [small, "-o", out, "--worker-arg", "--decode-only"], base,
                     env)
        lines = p.stderr.strip().splitlines()
        check(p.returncode == 2 and len(lines) == 1 and
              "-o %s: %s" % (out, why) in lines[0],
              "-o %s: exit 2, one line: exit %d: %s" % (out, p.returncode, p.stderr))
    check(open(notes).read() == "my notes\n", "-o notes.txt: the file is untouched")
    new = os.path.join(base, "new.db")
    p = label_as(None, fm, [os.path.join(base, "missing"), small, "-o", new], base, env)
    lines = p.stderr.strip().splitlines()
    check(p.returncode == 2 and len(lines) == 1 and
          "%s: No such file or directory" % os.path.join(base, "missing") in lines[0] and
          not os.path.exists(new),
          "a missing INPUT: exit 2, one line, no database: exit %d: %s" % (p.returncode,
                                                                         p.stderr))
    # reruns stop their workers at once: none waits out the 15 s and is killed
    eight = os.path.join(base, "eight")
    os.makedirs(eight)
    for i in range(8):
        write_jpeg(os.path.join(eight, "p%d.jpg" % i), 10 + i)
    edb = os.path.join(base, "eight.db")
    slow = []
    for i in range(11):
        t0 = time.monotonic()
        p = label_as(None, fm, [eight, "-o", edb, "-j", "2", "--progress", "none",
                                "--worker-arg", "--decode-only"], base, env)
        took = time.monotonic() - t0
        check(p.returncode == 0, "eight images, run %d: exit %d: %s" % (i, p.returncode,
                                                                       p.stderr[-500:]))
        if i and (took > 8 or "did not stop in time" in p.stderr):
            slow.append("rerun %d: %.1f s" % (i, took))
    check(not slow, "reruns stop their workers promptly: %s" % slow)


def case_reruns(fm, tmp):
    """What a rerun does with what the database holds (decode-only workers): a failed
    row stays without --retry-failed and is labelled again with it (its new result
    replaces the row); a file whose content changed is labelled again and its new row
    replaces the old one (one row per name); archives found in a folder are opened and
    their members skipped on a rerun; a second `facemill label` on a database another
    one is writing refuses at once (exit 3, one line) and changes nothing."""
    base = os.path.join(tmp, "reruns")
    home, photos = os.path.join(base, "home"), os.path.join(base, "photos")
    os.makedirs(home)
    os.makedirs(photos)
    env = user_env(home)
    write_jpeg(os.path.join(photos, "a.jpg"), 21)
    Image.fromarray(np.full((30, 20, 3), 90, np.uint8)).save(os.path.join(photos, "b.png"))
    db = os.path.join(base, "r.db")
    args = decode_only(photos, "-o", db)
    p = label_as(None, fm, args + ["--set", "decode.formats=jpeg"], base, env)
    rows, n = export_rows(fm, db, env)
    png = os.path.join(photos, "b.png")
    check(p.returncode == 1 and n == 2 and rows.get(png, {}) and
          "format not enabled" in rows[png]["text"],
          "PNG refused by decode.formats: a failed row, exit 1 (%d, %s)" % (p.returncode, rows))
    p = label_as(None, fm, args, base, env)
    rows, n = export_rows(fm, db, env)
    check(p.returncode == 1 and "0 committed, 2 already stored, 1 failed" in p.stderr and
          n == 2 and rows.get(png),
          "a rerun skips the failed row (%d: %s)" % (p.returncode, p.stderr[-300:]))
    p = label_as(None, fm, args + ["--retry-failed"], base, env)
    rows, n = export_rows(fm, db, env)
    check(p.returncode == 0 and "1 committed, 1 already stored, 0 failed" in p.stderr and
          n == 2 and png in rows and rows[png] is None,
          "--retry-failed labels the failed image again and its row replaces the failure "
          "(%d, %s: %s)" % (p.returncode, rows, p.stderr[-300:]))
    # a.jpg rewritten with other content and another size
    a = os.path.join(photos, "a.jpg")
    Image.fromarray(np.full((64, 80, 3), 30, np.uint8)).save(a, quality=90)
    p = label_as(None, fm, args, base, env)
    out = subprocess.run([fm, "export", db], env=env, capture_output=True, text=True,
                         timeout=120).stdout.splitlines()
    objs = [json.loads(line) for line in out]
    mine = [(o["width"], o["height"]) for o in objs if o["source"] == a]
    check(p.returncode == 0 and "1 committed, 1 already stored" in p.stderr and
          len(objs) == 2 and mine == [(80, 64)],
          "a changed file is labelled again, one row with its new size: %s (%d: %s)" %
          (mine, p.returncode, p.stderr[-300:]))
    # a.jpg moved away, a link left dangling in its place: the rerun counts it failed,
    # its labelled row stays
    os.rename(a, a + ".away")
    os.symlink(a + ".gone", a)
    p = label_as(None, fm, args, base, env)
    rows, n = export_rows(fm, db, env)
    check(p.returncode == 1 and "1 failed" in p.stderr and n == 2 and rows.get(a, 1) is None,
          "a labelled file unreadable on a rerun keeps its row (%d, %s: %s)" %
          (p.returncode, rows.get(a, "no row"), p.stderr[-300:]))
    os.unlink(a)
    os.rename(a + ".away", a)
    p = label_as(None, fm, args, base, env)
    rows, n = export_rows(fm, db, env)
    check(p.returncode == 0 and "0 committed, 2 already stored, 0 failed" in p.stderr and
          n == 2, "back in place, it is already stored (%d: %s)" % (p.returncode,
                                                                     p.stderr[-300:]))
    # archives inside a folder are opened like archive INPUTs: a zip in a sub-folder
    # and a tar.gz beside the photos give their members' rows
    import zipfile
    deep = os.path.join(base, "album")
    os.makedirs(os.path.join(deep, "2019"))
    write_jpeg(os.path.join(deep, "loose.jpg"), 30)
    for k, n in enumerate(("m1.jpg", "m2.jpg")):
        write_jpeg(os.path.join(base, n), 31 + k)
    with zipfile.ZipFile(os.path.join(deep, "2019", "pics.zip"), "w") as z:
        z.write(os.path.join(base, "m1.jpg"), "m1.jpg")
        z.write(os.path.join(base, "m2.jpg"), "m2.jpg")
        z.write(os.path.join(base, "m2.jpg"), "日本/é.jpg")  # a name marked UTF-8
        z.writestr("notes.txt", "not an image")
    with tarfile.open(os.path.join(deep, "more.tar.gz"), "w:gz") as t:
        t.add(os.path.join(base, "m1.jpg"), "inner/m3.jpg")
        hard = tarfile.TarInfo("inner/m3-again.jpg")  # a hard link, as GNU tar writes
        hard.type, hard.linkname = tarfile.LNKTYPE, "inner/m3.jpg"
        t.addfile(hard)
    adb = os.path.join(base, "album.db")
    aargs = decode_only(deep, "-o", adb)
    p = label_as(None, fm, aargs, base, env)
    rows, n = export_rows(fm, adb, env)
    want = {os.path.join(deep, "loose.jpg"), os.path.join(deep, "2019", "pics.zip:m1.jpg"),
            os.path.join(deep, "2019", "pics.zip:m2.jpg"),
            os.path.join(deep, "2019", "pics.zip:日本/é.jpg"),
            os.path.join(deep, "more.tar.gz:inner/m3.jpg")}
    check("1 hard or symbolic link in archives not labelled themselves" in p.stderr,
          "the tar's hard link is counted in the summary (%s)" % p.stderr[-300:])
    check(p.returncode == 0 and set(rows) == want and n == 5 and
          all(v is None for v in rows.values()),
          "a folder's zip and tar.gz are opened: %s (%d: %s)" % (sorted(rows), p.returncode,
                                                                p.stderr[-300:]))
    p = label_as(None, fm, aargs, base, env)
    check(p.returncode == 0 and "0 committed, 5 already stored" in p.stderr,
          "their members are skipped on a rerun (%s)" % p.stderr[-300:])
    # a folder linked into the album is followed (its images under the link's name);
    # a link back to a folder the walk is in is not (no loop)
    phone = os.path.join(base, "phone")
    os.makedirs(phone)
    write_jpeg(os.path.join(phone, "p1.jpg"), 40)
    os.symlink(phone, os.path.join(deep, "Phone"))
    os.symlink(deep, os.path.join(deep, "2019", "up"))
    p = label_as(None, fm, aargs, base, env)
    rows, n = export_rows(fm, adb, env)
    check(p.returncode == 0 and "1 committed, 5 already stored" in p.stderr and n == 6 and
          os.path.join(deep, "Phone", "p1.jpg") in rows,
          "a linked folder is labelled, a link back up is not followed (%d, %s: %s)" %
          (p.returncode, sorted(rows), p.stderr[-300:]))
    # --by-path: a file rewritten since is labelled again (its id covers size and time)
    bp = os.path.join(base, "bypath")
    os.makedirs(bp)
    write_jpeg(os.path.join(bp, "a.jpg"), 42)
    bdb = os.path.join(base, "bypath.db")
    bargs = decode_only("--by-path", bp, "-o", bdb)
    p = label_as(None, fm, bargs, base, env)
    Image.fromarray(np.full((64, 80, 3), 30, np.uint8)).save(os.path.join(bp, "a.jpg"),
                                                             quality=90)
    p = label_as(None, fm, bargs, base, env)
    out = subprocess.run([fm, "export", bdb], env=env, capture_output=True, text=True,
                         timeout=120).stdout.splitlines()
    sizes = [(o["width"], o["height"]) for o in map(json.loads, out)]
    check(p.returncode == 0 and "1 committed, 0 already stored" in p.stderr and
          sizes == [(80, 64)],
          "--by-path: a rewritten file is labelled again, one row (%d, %s: %s)" %
          (p.returncode, sizes, p.stderr[-300:]))
    # an image named twice (a file besides its folder, a folder twice, an archive
    # twice, a path listed twice on stdin) is one job: the summary counts it once and
    # says how many names were repeated, and the run ends (before: the repeats were
    # counted as images, "3/7 done")
    rdb = os.path.join(base, "repeat.db")
    zp = os.path.join(deep, "2019", "pics.zip")
    tp = os.path.join(base, "again.tar")  # one name twice: tar -r appends a file again
    with tarfile.open(tp, "w") as t:
        t.add(os.path.join(base, "m2.jpg"), "m.jpg")
        t.add(os.path.join(base, "m2.jpg"), "m.jpg")
    rargs = decode_only(bp, bp + "/./a.jpg", bp + "//", zp, zp, tp, "-", "-o", rdb)
    listed = os.path.join(base, "m1.jpg")
    p = label_as(None, fm, rargs, base, env, stdin="%s\n%s\n" % (listed, listed))
    rows, n = export_rows(fm, rdb, env)
    check(p.returncode == 0 and "6 images: 6 committed, 0 already stored, 0 failed" in
          p.stderr and "7 repeats of an image the inputs name already" in p.stderr and n == 6,
          "repeated inputs (./ and // spellings, an archive's name twice) are labelled once "
          "and counted once (%d, %d rows: %s)" % (p.returncode, n, p.stderr[-400:]))
    # the run directory (sockets, the broker's journal) goes in $TMPDIR, and is
    # removed at the end
    tmpd = os.path.join(base, "tmpdir")
    os.makedirs(tmpd)
    tenv = dict(env, TMPDIR=tmpd)
    lab = subprocess.Popen([fm, "label", "-"] + decode_only("-o", os.path.join(base, "t.db")),
                           cwd=base, env=tenv, stdin=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not glob.glob(tmpd + "/facemill-label.*/pid"):
        time.sleep(0.05)
    made = glob.glob(tmpd + "/facemill-label.*/pid")
    _, err = lab.communicate(listed + "\n", timeout=120)
    check(made and lab.returncode == 0 and "1 committed" in err and not os.listdir(tmpd),
          "label's run directory is made in $TMPDIR and removed at the end (%s, %s: %s)" %
          (made, os.listdir(tmpd), err[-300:]))
    # a $TMPDIR where no directory can be made: /tmp instead
    p = label_as(None, fm, [listed] + decode_only("-o", os.path.join(base, "t2.db")), base,
                 dict(env, TMPDIR="/proc"))
    check(p.returncode == 0 and "1 committed" in p.stderr,
          "label with TMPDIR=/proc runs in /tmp (%d: %s)" % (p.returncode, p.stderr[-300:]))
    # --all with the database in the folder labelled: the database is no input
    own = os.path.join(base, "own")
    os.makedirs(own)
    write_jpeg(os.path.join(own, "o.jpg"), 41)
    odb = os.path.join(own, "labels.db")
    oargs = decode_only("--all", own, "-o", odb)
    for k in range(2):
        p = label_as(None, fm, oargs, base, env)
        rows, n = export_rows(fm, odb, env)
        check(p.returncode == 0 and n == 1 and list(rows) == [os.path.join(own, "o.jpg")],
              "--all beside its own database, run %d: one row, the photo's (%d, %s: %s)" %
              (k + 1, p.returncode, sorted(rows), p.stderr[-300:]))
    # another run holds the database: refused at once, nothing changed
    import fcntl
    before = open(db, "rb").read()
    with open(db, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        t0 = time.monotonic()
        p = label_as(None, fm, args + ["--retry-failed"], base, env, timeout=60)
        took = time.monotonic() - t0
    lines = p.stderr.strip().splitlines()
    check(p.returncode == 3 and len(lines) == 1 and
          "another facemill label is writing it" in lines[0] and took < 10 and
          open(db, "rb").read() == before,
          "a database another label holds: exit 3, one line, at once, unchanged "
          "(%d, %.1f s: %s)" % (p.returncode, took, p.stderr[-300:]))


def main():
    a = dir_args("bin", "src", more=((["--only"], {
        "choices": ["hard_inputs"],
        "help": "run only this part (hard_inputs: no models needed)"}),))
    fm = os.path.join(a.bin, "facemill")
    src = a.src
    tmp = tempfile.mkdtemp(prefix="facemill-e2e-")
    try:
        case_hard_inputs(fm, tmp)
        case_reruns(fm, tmp)
    finally:
        shutil.rmtree(os.path.join(tmp, "hard"), ignore_errors=True)
        shutil.rmtree(os.path.join(tmp, "reruns"), ignore_errors=True)
    samples = samples_dir(src, "test_label_e2e")
    if a.only or not samples:
        shutil.rmtree(tmp, ignore_errors=True)
        return check.summary() if a.only else 1
    try:
        home = os.path.join(tmp, "home")
        os.makedirs(home)
        inputs = os.path.join(tmp, "photos")
        heif_tool = os.path.join(os.path.dirname(os.path.abspath(a.bin)), "tests", "heif_tool")
        with_faces, without, broken = make_inputs(samples, inputs, heif_tool)
        env = user_env(home)
        names = sorted(os.listdir(inputs))
        paths = [os.path.join(inputs, n) for n in names]
        want, p = run_lines(fm, "predict", paths, src, env)
        check(sorted(want) == names and p.returncode == 1,
              "predict answers every input, exit 1: exit %d: %s" %
              (p.returncode, p.stderr[-1000:]))
        for o in want.values():
            check_image("predict", o, [] if o["error"] else ["times_ms"])
        for n in broken:
            check(want.get(n, {}).get("error"), "predict: %s is an error" % n)
        for n, text in (("bad_gif.jpg", "unsupported format: GIF"),
                        ("bad_truncated.png", "corrupt PNG: ")):
            e = (want.get(n) or {}).get("error") or {}
            check(str(e.get("text", "")).startswith(text), "predict: %s: %s" % (n, e))
        # PNG and WebP: the faces of the JPEG whose pixels they hold, number for number
        for copy, orig in (("gen_sample2.png", "sample2.jpg"),
                           ("gen_sample1.webp", "sample1.jpg"),
                           ("gen_sample5.tif", "sample5.jpg")):
            c, o = want.get(copy) or {}, want.get(orig) or {}  # within REL: batched with others
            check(c.get("error") is None and c.get("faces") and
                  [f["box"] for f in c["faces"]] == [f["box"] for f in o.get("faces", [])] and
                  [(f["gender"], f["race"]) for f in c["faces"]] ==
                  [(f["gender"], f["race"]) for f in o.get("faces", [])] and
                  not any(face_diff(f, g, REL)
                          for f, g in zip(c["faces"], o["faces"])),
                  "predict: %s has the faces of %s: %s / %s" % (
                      copy, orig, [f["box"] for f in c.get("faces") or []],
                      [f["box"] for f in o.get("faces") or []]))
        # HEIC (turned upright by its rotation) and AVIF: the JPEG's size, and each of
        # its faces found again (boxes overlapping by 0.7 or more)
        for copy, orig in (("gen_sample3.heic", "sample3.jpg"),
                           ("gen_sample4.avif", "sample4.jpg")):
            c, o = want.get(copy) or {}, want.get(orig) or {}
            found = [max([iou(f["box"], g["box"]) for g in c.get("faces") or []] or [0])
                     for f in o.get("faces") or []]
            check(c.get("error") is None and (c.get("width"), c.get("height")) ==
                  (o.get("width"), o.get("height")) and len(c.get("faces") or []) ==
                  len(found) > 0 and min(found) >= 0.7,
                  "predict: %s: %s, %sx%s, overlaps with %s's faces %s" % (
                      copy, c.get("error"), c.get("width"), c.get("height"), orig,
                      [round(x, 2) for x in found]))
        # decode.formats=jpeg: the PNG is refused by name, the JPEG labelled as before
        only, p = run_lines(fm, "predict", [os.path.join(inputs, "gen_sample2.png"),
                                            os.path.join(inputs, "sample2.jpg"),
                                            "--set", "decode.formats=jpeg"], src, env)
        e = (only.get("gen_sample2.png") or {}).get("error") or {}
        check(p.returncode == 1 and e.get("name") == "unsupported" and
              e.get("text") == "format not enabled (decode.formats): PNG" and
              len((only.get("sample2.jpg") or {}).get("faces") or []) ==
              len(want.get("sample2.jpg", {}).get("faces") or [None]),
              "predict --set decode.formats=jpeg: exit %d, %s, %s" % (
                  p.returncode, e, (only.get("sample2.jpg") or {}).get("error")))
        det, p = run_lines(fm, "detect", paths, src, env)
        check(sorted(det) == names and p.returncode == 1,
              "detect answers every input, exit 1: exit %d: %s" %
              (p.returncode, p.stderr[-1000:]))
        ndet = 0
        for name in names:
            d, w = det.get(name), want.get(name)
            if d is None or w is None:
                continue
            check_image("detect", d, [] if d["error"] else ["scale", "times_ms"])
            check(d["error"] == w["error"] and d["width"] == w["width"] and
                  d["height"] == w["height"] and len(d["faces"]) == len(w["faces"]),
                  "detect %s: %s, %sx%s, %d faces; predict %s, %sx%s, %d" % (
                      name, d["error"], d["width"], d["height"], len(d["faces"]),
                      w["error"], w["width"], w["height"], len(w["faces"])))
            for i, (a, b) in enumerate(zip(d["faces"], w["faces"])):
                ndet += 1
                check(list(a) == list(DETECTION) and
                      not face_diff(a, {k: b[k] for k in DETECTION}, 0, DETECTION) and
                      all(k in b for k in ATTRIBUTES),
                      "%s face %d: detect %s, predict %s" % (name, i, a, b))
        check(ndet >= 15, "detect and predict: %d faces compared" % ndet)
        for tag, cwd in (("checkout root", src), ("unrelated directory", tmp)):
            run_case(tag, fm, inputs, cwd, env, want, with_faces, without, broken)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
