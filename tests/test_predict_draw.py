#!/usr/bin/python3
"""test_predict_draw.py - `facemill predict --draw` and `--draw-dir` on a sample photo
at three sizes (480, 1920 and 3840 pixels wide).

For each picture written: its size is the input's (the displayed size); along the
inside of every face's box (the line is drawn inwards, as wide as the long side / 500)
the pixels changed from the input's and are the box's green; above each face whose
label fits there, the label's background spans exactly its height, which grows with
the image: 3 lines of 9 font pixels, one font pixel per 400 image pixels
(include/facemill/draw.h), e.g. 27 pixels at 480 wide and 135 at 1920; the centre of
the label's first line holds white text pixels. --draw-dir writes one picture per
input, a JPEG named after it (a PNG's NAME.png.jpg, for predict and detect), each
checked as --draw's; --draw with two inputs is a usage error (2).

Exit 0 pass, 1 fail, 77 skip (no models: run models/fetch; no python3-pil).
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fm_testlib import Checks, run  # noqa: E402

check = Checks("test_predict_draw")
BOX = (0, 220, 0)
LABEL_BG = (0, 110, 0)


def near(p, c, tol):
    return all(abs(int(a) - b) <= tol for a, b in zip(p, c))


def scale_for(long_side):
    return max(1, (long_side + 200) // 400)


def label_lines(face):
    g = max(face["gender_probs"], key=lambda k: face["gender_probs"][k])
    r = max(face["race_probs"], key=lambda k: face["race_probs"][k])
    return ["age %.0f +/-%.0f" % (face["age"], face["age_std"]),
            "%s %.2f" % (g, face["gender_probs"][g]), "%s %.2f" % (r, face["race_probs"][r])]


def check_picture(Image, src, out, faces, what):
    a = Image.open(src).convert("RGB")
    b = Image.open(out).convert("RGB")
    check(a.size == b.size, "%s: written at the input's size %s (%s)" % (what, a.size, b.size))
    if a.size != b.size:
        return
    w, h = a.size
    lng = max(w, h)
    t, s = max(1, round(lng / 500)), scale_for(lng)
    pa, pb = a.load(), b.load()
    for i, f in enumerate(faces):
        x1, y1 = round(f["box"]["x1"]), round(f["box"]["y1"])
        x2, y2 = round(f["box"]["x2"]), round(f["box"]["y2"])
        # the inside band of the left and right edges, away from the corners (labels)
        band = [(x, y) for y in range(max(0, y1 + 2 * t), min(h, y2 - 2 * t))
                for x in list(range(x1, x1 + t)) + list(range(x2 - t + 1, x2 + 1))
                if 0 <= x < w]
        changed = sum(1 for p in band if sum(abs(u - v) for u, v in zip(pa[p], pb[p])) > 60)
        green = sum(1 for p in band if near(pb[p], BOX, 60))
        check(band and changed >= 0.8 * len(band) and green >= 0.8 * len(band),
              "%s face %d: the box's pixels changed (%d of %d) to green (%d)" %
              (what, i, changed, len(band), green))
        lines = label_lines(f)
        lw = (max(len(x) for x in lines) * 6 + 1) * s
        lh = 3 * 9 * s
        if y1 - lh < 0 or x1 + lw > w:
            continue  # placed below or moved left: not where this check looks
        col = [near(pb[x1 + max(0, s // 2), y], LABEL_BG, 50) for y in range(max(0, y1 - lh - 6 * s), y1)]
        run_len = 0
        for v in reversed(col):  # up from the box's top
            if not v:
                break
            run_len += 1
        check(abs(run_len - lh) <= max(2, t),
              "%s face %d: label %d pixels high above the box (expected %d, scale %d)" %
              (what, i, run_len, lh, s))
        text_row = y1 - lh + s + 3 * s  # the middle of the first line's glyphs
        whites = sum(1 for x in range(x1 + s, x1 + lw - s)
                     if 0 <= text_row < h and near(pb[x, text_row], (255, 255, 255), 80))
        check(whites >= 3 * s, "%s face %d: white text in the label (%d pixels)" %
              (what, i, whites))


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
    sample = os.path.join(a.src, "models", "cache", "samples", "sample1.jpg")
    if not os.path.exists(sample) or not os.path.exists(
            os.path.join(a.src, "models", "cache", "mtcnn_pnet.fmm")):
        print("skip: no models or sample photos (run models/fetch)")
        return 77
    fm = os.path.join(os.path.abspath(a.bin), "facemill")
    tmp = tempfile.mkdtemp(prefix="fmdraw.")
    try:
        base = Image.open(sample).convert("RGB")
        inputs = []
        for width in (480, 1920, 3840):
            p = os.path.join(tmp, "in%d.jpg" % width)
            base.resize((width, width * base.size[1] // base.size[0]), Image.LANCZOS).save(
                p, quality=95)
            inputs.append(p)
        for p in inputs:
            out = p.replace(".jpg", "-drawn.jpg")
            r = run([fm, "predict", "--draw", out, p], timeout=300)
            check(r.returncode == 0, "predict --draw %s exits 0: %s" %
                  (os.path.basename(p), r.stderr[-300:]))
            faces = json.loads(r.stdout.splitlines()[0])["faces"] if r.stdout else []
            check(len(faces) >= 2, "%s: faces found (%d)" % (os.path.basename(p), len(faces)))
            if os.path.exists(out):
                check_picture(Image, p, out, faces, os.path.basename(p))
        # a PNG too: its picture is a JPEG named in480.png.jpg (beside in480.jpg's)
        png = os.path.join(tmp, "in480.png")
        Image.open(inputs[0]).save(png)
        d = os.path.join(tmp, "drawn", "deeper")  # made by predict, parents too
        drawn = run([fm, "predict", "--draw-dir", d] + inputs[:2] + [png], timeout=300)
        outs = sorted(os.listdir(d)) if os.path.isdir(d) else None
        check(drawn.returncode == 0 and outs == ["in1920.jpg", "in480.jpg", "in480.png.jpg"],
              "--draw-dir makes its directory and writes one picture per input: %s" % outs)
        if outs and "in480.png.jpg" in outs:
            check(Image.open(os.path.join(d, "in480.png.jpg")).format == "JPEG",
                  "--draw-dir: the PNG's picture is a JPEG")
        dd = os.path.join(tmp, "detect-drawn")
        r = run([fm, "detect", "--draw-dir", dd, png], timeout=300)
        outs_d = sorted(os.listdir(dd)) if os.path.isdir(dd) else None
        check(r.returncode == 0 and outs_d == ["in480.png.jpg"],
              "detect --draw-dir names a PNG's picture in480.png.jpg: %s" % outs_d)
        blocked = os.path.join(tmp, "a-file")
        with open(blocked, "w") as f:
            f.write("x")
        r = run([fm, "predict", "--draw-dir", os.path.join(blocked, "d")] + inputs[:1],
                timeout=300)
        check(r.returncode == 1 and "not a directory" in r.stderr and not r.stdout,
              "--draw-dir under a file fails before any image, with one clear line (%d, %r)"
              % (r.returncode, r.stderr.strip()[-200:]))
        checked = 0
        for line in drawn.stdout.splitlines():
            o = json.loads(line)
            name = os.path.basename(o["source"])
            name = name if name.endswith(".jpg") else name + ".jpg"
            if outs and name in outs:
                check_picture(Image, o["source"], os.path.join(d, name), o["faces"],
                              "draw-dir " + name)
                checked += 1
        check(checked == 3, "--draw-dir: the three pictures checked (%d)" % checked)
        r = run([fm, "predict", "--draw", os.path.join(tmp, "x.jpg")] + inputs[:2], timeout=60)
        check(r.returncode == 2, "--draw with two images is a usage error (%d)" % r.returncode)
    finally:
        check.done_with(tmp)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
