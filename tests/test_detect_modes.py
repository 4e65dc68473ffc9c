#!/usr/bin/python3
"""test_detect_modes.py - labelling archives of face chips without the detector:
`facemill predict --chips-dir` and `detect.mode` aligned and cropped, on the sample
photos with the real models.

- `predict --chips-dir D` on two sample photos writes one JPEG per face, named
  <file name>.face<N>.jpg, at the backbone's input size (150x150).
- Those chips labelled again with `--set detect.mode=aligned` give one face each,
  its box the whole chip, score 1, no detector time, the same landmarks on every chip
  (the backbone's template), and the photo's answers: the same gender and ethnicity,
  age within 1 year, probabilities within 0.05 (the chip is cut from the full-size
  photo and re-encoded, the mirror view is the chip's mirror image: near, not equal).
- `embed.mirror=false` (the face without its mirror image) moves every answer a
  little and keeps each chip's gender.
- `embed.mirror_age_std` (the mirror view only where the face alone is unsure): with
  the threshold between the chips' age spreads, each chip gets the face-alone answer
  or the two-view one, as the rule says, and both occur; `embed.mirror_prob=1` gives
  every chip its two-view answer.
- `detect.mode=cropped` on a square crop of a face places the documented landmark
  shares (include/facemill/detect.h) on it and labels it; a corrupt file among the
  inputs becomes an error record and the others are still labelled.
- `detect.fallback=cropped` takes an image without a detected face (flat gray) as
  one cropped face with score 0, and leaves a detected face alone; `facemill eval`
  (whose default it is) counts that image as placed, not detected.
- `facemill detect` refuses a mode other than mtcnn (exit 1, one clear line);
  `--chips-dir` without heads is a usage error (2); `facemill config` shows the mode.

Exit 0 pass, 1 fail, 77 skip (no models: run models/fetch; no python3-pil).
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fm_testlib import Checks, json_records as records, run, top_class as top  # noqa: E402

check = Checks("test_detect_modes")
CROPPED = [0.295, 0.291, 0.691, 0.292, 0.492, 0.521, 0.312, 0.692, 0.672, 0.693]
POINTS = ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--src", required=True)
    a = ap.parse_args()
    try:
        from PIL import Image
    except ImportError:
        print("skip: python3-pil is not installed")
        return 77
    samples = [os.path.join(a.src, "models", "cache", "samples", "sample%d.jpg" % i)
               for i in (1, 2)]
    if not all(os.path.exists(s) for s in samples) or not os.path.exists(
            os.path.join(a.src, "models", "cache", "mtcnn_pnet.fmm")):
        print("skip: no models or sample photos (run models/fetch)")
        return 77
    fm = os.path.join(os.path.abspath(a.bin), "facemill")
    tmp = tempfile.mkdtemp(prefix="fmmodes.")
    try:
        chips = os.path.join(tmp, "chips", "deeper")
        r = run([fm, "predict", "-q", "--chips-dir", chips] + samples, timeout=300)
        photos = records(r)
        check(r.returncode == 0 and len(photos) == 2,
              "predict --chips-dir exits 0 with two records (%d): %s" %
              (r.returncode, r.stderr[-300:]))
        want = []
        for o in photos:
            for j, f in enumerate(o["faces"]):
                want.append(("%s.face%d.jpg" % (os.path.basename(o["source"]), j + 1), f))
        written = sorted(os.listdir(chips)) if os.path.isdir(chips) else []
        check(len(want) >= 4 and written == sorted(n for n, _ in want),
              "one chip per face, named <file>.face<N>.jpg: %s" % written)
        sizes = {Image.open(os.path.join(chips, n)).size for n in written}
        check(sizes == {(150, 150)}, "chips at the backbone's input size: %s" % sizes)

        # the chips again, without the detector
        paths = [os.path.join(chips, n) for n, _ in want]
        r = run([fm, "predict", "-q", "--set", "detect.mode=aligned"] + paths, timeout=300)
        again = records(r)
        check(r.returncode == 0 and len(again) == len(want),
              "detect.mode=aligned labels every chip (%d of %d): %s" %
              (len(again), len(want), r.stderr[-300:]))
        lms = set()
        for (name, f), o in zip(want, again):
            g = o["faces"][0] if len(o["faces"]) == 1 else None
            check(g is not None, "%s: exactly one face" % name)
            if g is None:
                continue
            lms.add(tuple(round(g["landmarks"][p][c], 3) for p in POINTS for c in "xy"))
            check(g["box"] == {"x1": 0, "y1": 0, "x2": 150, "y2": 150} and g["score"] == 1,
                  "%s: the box is the chip, score 1 (%s, %s)" % (name, g["box"], g["score"]))
            check(o["times_ms"]["detect"] < 1.0,
                  "%s: no detector time (%.3f ms)" % (name, o["times_ms"]["detect"]))
            same = (top(g["gender_probs"]) == top(f["gender_probs"]) and
                    top(g["race_probs"]) == top(f["race_probs"]) and
                    abs(g["age"] - f["age"]) <= 1.0 and
                    all(abs(g["gender_probs"][k] - f["gender_probs"][k]) <= 0.05
                        for k in f["gender_probs"]) and
                    all(abs(g["race_probs"][k] - f["race_probs"][k]) <= 0.05
                        for k in f["race_probs"]))
            check(same, "%s: the photo's answers (age %.2f vs %.2f, %s/%s vs %s/%s)" %
                  (name, g["age"], f["age"], top(g["gender_probs"]), top(g["race_probs"]),
                   top(f["gender_probs"]), top(f["race_probs"])))
        check(len(lms) == 1, "the same landmarks (the template) on every chip: %s" % lms)

        # embed.mirror=false: the heads read the face alone, so every answer moves a
        # little from the default's (the mean of the face and its mirror image), but
        # stays the same person's
        r = run([fm, "predict", "-q", "--set", "detect.mode=aligned", "--set",
                 "embed.mirror=false"] + paths, timeout=300)
        alone = records(r)
        check(r.returncode == 0 and len(alone) == len(again),
              "embed.mirror=false labels every chip (%d)" % len(alone))
        moved = 0
        for o, g in zip(alone, again):
            if len(o["faces"]) != 1 or len(g["faces"]) != 1:
                continue
            u, v = o["faces"][0], g["faces"][0]
            moved += abs(u["age"] - v["age"]) > 1e-4
            check(top(u["gender_probs"]) == top(v["gender_probs"]) and
                  abs(u["age"] - v["age"]) < 5,
                  "%s: the face alone reads as the same person (age %.2f vs %.2f)" %
                  (os.path.basename(o["source"]), u["age"], v["age"]))
        check(moved == len(again), "every answer moved without the mirror view (%d of %d)"
              % (moved, len(again)))

        # embed.mirror_age_std: the mirror view only for faces the face alone leaves
        # unsure. With the threshold between the chips' age spreads from the face
        # alone, each chip gets either the face-alone answer or the two-view answer,
        # the one the rule asks for, and both kinds occur
        spreads = sorted(o["faces"][0]["age_std"] for o in alone if len(o["faces"]) == 1)
        cut = (spreads[len(spreads) // 2 - 1] + spreads[len(spreads) // 2]) / 2
        r = run([fm, "predict", "-q", "--set", "detect.mode=aligned", "--set",
                 "embed.mirror_age_std=%.9g" % cut, "--set", "embed.mirror_prob=0.5"] + paths,
                timeout=300)
        mixed = records(r)
        check(r.returncode == 0 and len(mixed) == len(again),
              "embed.mirror_age_std=%.3f labels every chip (%d)" % (cut, len(mixed)))
        kinds = {True: 0, False: 0}

        def near(u, v):
            return (abs(u["age"] - v["age"]) < 1e-3 and abs(u["age_std"] - v["age_std"]) < 1e-3
                    and all(abs(u["gender_probs"][k] - v["gender_probs"][k]) < 1e-4
                            for k in v["gender_probs"])
                    and all(abs(u["race_probs"][k] - v["race_probs"][k]) < 1e-4
                            for k in v["race_probs"]))
        for o, u, v in zip(mixed, alone, again):
            if len(o["faces"]) != 1 or len(u["faces"]) != 1 or len(v["faces"]) != 1:
                continue
            m, a, b = o["faces"][0], u["faces"][0], v["faces"][0]
            if abs(a["age_std"] - cut) < 1e-3:
                continue  # too near the threshold to say which the rule picks
            both = a["age_std"] >= cut
            kinds[both] += 1
            check(near(m, b if both else a),
                  "%s: age spread %.3f alone, threshold %.3f: the %s answer (age %.4f; alone "
                  "%.4f, both views %.4f)" % (os.path.basename(o["source"]), a["age_std"], cut,
                                              "two-view" if both else "face-alone", m["age"],
                                              a["age"], b["age"]))
        check(kinds[True] >= 1 and kinds[False] >= 1,
              "some chips with the mirror view, some without: %s" % kinds)
        # a probability at most embed.mirror_prob brings the mirror view too: at 1 every
        # face gets it, whatever its age spread
        r = run([fm, "predict", "-q", "--set", "detect.mode=aligned", "--set",
                 "embed.mirror_age_std=1000", "--set", "embed.mirror_prob=1"] + paths,
                timeout=300)
        allp = records(r)
        check(r.returncode == 0 and len(allp) == len(again) and
              all(len(o["faces"]) == 1 and near(o["faces"][0], v["faces"][0])
                  for o, v in zip(allp, again)),
              "embed.mirror_prob=1: every chip's two-view answer")

        # cropped: a square crop around a detected face, and a corrupt file
        f = photos[0]["faces"][0]
        box = f["box"]
        cx, cy = (box["x1"] + box["x2"]) / 2, (box["y1"] + box["y2"]) / 2
        half = 0.6 * max(box["x2"] - box["x1"], box["y2"] - box["y1"])
        crop = Image.open(samples[0]).convert("RGB").crop(
            (round(cx - half), round(cy - half), round(cx + half), round(cy + half)))
        crop = crop.resize((200, 200), Image.LANCZOS)
        cpath = os.path.join(tmp, "crop.jpg")
        crop.save(cpath, quality=95)
        bad = os.path.join(tmp, "bad.jpg")
        with open(bad, "wb") as fh:
            fh.write(b"\xff\xd8\xff\xe0 not really a jpeg")
        r = run([fm, "predict", "-q", "--set", "detect.mode=cropped", bad, cpath], timeout=300)
        out = records(r)
        check(r.returncode == 1 and len(out) == 2, "a corrupt file fails alone (exit %d, %d "
              "records)" % (r.returncode, len(out)))
        if len(out) == 2:
            check(out[0]["error"] is not None and not out[0]["faces"],
                  "the corrupt file is an error record: %s" % out[0]["error"])
            g = out[1]["faces"][0] if len(out[1]["faces"]) == 1 else None
            check(g is not None and "age" in g and g["gender"] in ("male", "female"),
                  "the crop is labelled: %s" % (g and {k: g[k] for k in ("age", "gender")}))
            if g:
                got = [g["landmarks"][p][c] for p in POINTS for c in "xy"]
                exp = [s * 200 - 0.5 for s in CROPPED]
                check(all(abs(u - v) < 0.01 for u, v in zip(got, exp)),
                      "cropped places the documented shares: %s" % [round(v, 2) for v in got])

        # detect.fallback=cropped: an image without a face (flat gray) is taken as one
        # cropped face with score 0; an image with one keeps the detector's answer
        blank = os.path.join(tmp, "blank.jpg")
        Image.new("RGB", (200, 200), (120, 120, 120)).save(blank, quality=95)
        r = run([fm, "predict", "-q", blank, cpath], timeout=300)
        plain = records(r)
        r = run([fm, "predict", "-q", "--set", "detect.fallback=cropped", blank, cpath],
                timeout=300)
        fb = records(r)
        check(len(plain) == 2 and len(fb) == 2 and not plain[0]["faces"] and
              len(fb[0]["faces"]) == 1, "fallback: the blank image has no face, then one "
              "(%s)" % [len(o["faces"]) for o in plain + fb])
        if len(fb) == 2 and len(fb[0]["faces"]) == 1 and len(plain) == 2:
            g = fb[0]["faces"][0]
            got = [g["landmarks"][p][c] for p in POINTS for c in "xy"]
            check(g["score"] == 0 and g["box"] == {"x1": 0, "y1": 0, "x2": 200, "y2": 200} and
                  all(abs(u - s * 200 + 0.5) < 0.01 for u, s in zip(got, CROPPED)) and
                  g["gender"] in ("male", "female"),
                  "fallback: score 0, the whole image, cropped's landmarks, labelled (%s)" %
                  {k: g[k] for k in ("score", "box")})
            u = fb[1]["faces"][0] if len(fb[1]["faces"]) == 1 else None
            v = plain[1]["faces"][0] if len(plain[1]["faces"]) == 1 else None
            # the same face; the answers to float rounding (another face in its batch)
            check(u and v and u["score"] > 0.5 and
                  all(u[k] == v[k] for k in ("box", "score", "landmarks")) and
                  abs(u["age"] - v["age"]) < 1e-3 and u["gender"] == v["gender"],
                  "fallback: a detected face is the detector's, unchanged")
        # facemill eval takes its images as faces: the blank one is "placed", not detected
        data = os.path.join(tmp, "utk")
        os.mkdir(data)
        os.symlink(blank, os.path.join(data, "30_0_0_blank.jpg"))
        os.symlink(cpath, os.path.join(data, "30_0_0_face.jpg"))
        r = run([fm, "eval", "-q", "--data", data, "--json", "--resamples", "10"], timeout=300)
        ev = records(r)
        check(r.returncode == 0 and len(ev) == 1 and ev[0]["n_detected"] == 1 and
              ev[0]["n_placed"] == 1 and abs(ev[0]["detect_rate"] - 0.5) < 1e-9,
              "eval: one detected, one placed, detection rate 0.5 (%s)" %
              ({k: ev[0].get(k) for k in ("n_detected", "n_placed", "detect_rate")}
               if ev else r.stderr[-300:]))
        r = run([fm, "eval", "-q", "--data", data, "--json", "--resamples", "10", "--set",
                 "detect.fallback=none"], timeout=300)
        ev = records(r)
        check(r.returncode == 0 and len(ev) == 1 and ev[0]["n_placed"] == 0 and
              ev[0]["n_detected"] == 1, "eval with detect.fallback=none: nothing placed")

        r = run([fm, "detect", "--set", "detect.mode=cropped", cpath], timeout=60)
        check(r.returncode == 1 and "detect.mode must be mtcnn" in r.stderr and not r.stdout,
              "facemill detect refuses detect.mode=cropped (%d, %r)" %
              (r.returncode, r.stderr.strip()[-200:]))
        r = run([fm, "predict", "--set", "heads.model=", "--chips-dir", chips, cpath],
                timeout=60)
        check(r.returncode == 2 and "--chips-dir" in r.stderr,
              "--chips-dir without heads is a usage error (%d, %r)" %
              (r.returncode, r.stderr.strip()[-200:]))
        # times_ms holds the stages that ran: no alignment, backbone or heads without
        # heads, nor for an image without a face
        r = records(run([fm, "predict", "-q", "--set", "heads.model=", cpath], timeout=60))
        r2 = records(run([fm, "predict", "-q", blank], timeout=60))
        t1 = r[0].get("times_ms") if len(r) == 1 else None
        t2 = r2[0].get("times_ms") if len(r2) == 1 else None
        check(t1 is not None and t2 is not None and sorted(t1) == ["decode", "detect"] and
              sorted(t2) == ["decode", "detect"],
              "times_ms: only decode and detect ran (%s, %s)" % (t1, t2))
        r = run([fm, "config", "--set", "detect.mode=aligned"], timeout=60)
        check(r.returncode == 0 and "mode: aligned" in r.stdout,
              "facemill config shows detect.mode")
        r = run([fm, "predict", "--set", "detect.mode=nope", cpath], timeout=60)
        check(r.returncode == 2 and "detect.mode" in r.stderr,
              "an unknown mode is a usage error naming the key (%d)" % r.returncode)
    finally:
        check.done_with(tmp)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
