#!/usr/bin/python3
"""test_mtcnn_ref: facemill's C detector (`facemill detect`) against the numpy
reference tests/reference/mtcnn_ref.py, on identical pixels.

For every sample photo (models/cache/samples) and a few images made from them by
tests/detect_images.c (half size, rotated, odd-sized crop, a crop inside a face,
double size so decoding DCT-scales it, tall and narrow, blank, tiny), `facemill
detect --ppm-dir` detects
faces and writes the decoded RGB pixels; the reference runs on that PPM with the same
settings (min_face converted to decoded pixels by the reported DCT scale, max_side
1600, the levels for faces under min_face_frac 0.025 of the long side skipped: the
defaults). facemill's coordinates are mapped back to decoded pixels, then:
  - both find the same number of faces;
  - faces are paired one to one (best IoU first) and every pair has IoU deficit
    (1 - IoU) <= 1e-4, every landmark within 0.02 px, scores within 1e-4.
The bounds are 17-30x the worst agreement seen with either of OpenBLAS's kernel sets
(over all images: IoU deficit 4.1e-6, landmark 0.0009 px, score 9.7e-7 with the Zen
kernels; 3.1e-6, 0.0006 px, 5.8e-6 with the Prescott kernels, whose rounding moves
the score of a face far from saturation most), so a half-pixel convention bug or a
rounding that differs (in the pyramid, the crops or the coordinate mapping) fails
them, and kernels that round differently do not.
Two images run again with detect.pad=0.25; the reference then gets the PPM inside a
border of gray 128 (what the option means) and its coordinates are shifted back. Two
sample photos and an image of 17-19 pixel faces in a 1920x1280 frame run again with
detect.min_face_frac=0 (every level of the pyramid); on the latter the default must
find fewer faces than every level does (the levels for them were skipped).
Prints per image the worst IoU deficit (1 - IoU), landmark error and score difference,
then the worst of each over all images next to its bound.

    test_mtcnn_ref.py --images-tool PATH [--keep DIR]

FACEMILL_BIN_DIR (the facemill program) and FACEMILL_SOURCE_DIR come from the
environment (ctest sets them). Exit 0 pass, 1 fail, 77 when models/cache has not been
made (run models/fetch).
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fm_testlib import SKIP, bin_dir, source_dir  # noqa: E402

MAX_IOU_DEFICIT = 1e-4
MAX_LANDMARK_PX = 0.02
MAX_SCORE_DIFF = 1e-4
MIN_FACE = 20.0
MIN_FACE_FRAC = 0.025
MAX_SIDE = 1600
FACTOR = 0.709
THRESHOLDS = (0.6, 0.7, 0.7)
GENERATED = ["down50", "rot15", "crop", "tight", "up2", "narrow", "blank", "tiny", "small"]
# Run again with detect.pad (the reference gets the PPM padded with gray by numpy).
PAD = 0.25
PAD_VALUE = 128  # FM_DETECT_PAD_VALUE
# facemill's landmark names, in the reference's order
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
PADDED = ["tight", "crop"]
# Run again with every pyramid level (detect.min_face_frac=0): two sample photos and
# the image of small faces, where the default must find fewer (its levels skipped)
ALL_LEVELS = ["sample1", "sample4", "small"]
# Faces the reference finds on the generated images must not all vanish: these must
# have at least one (a check that the generated images are what they claim to be).
EXPECT_FACES = {"down50", "rot15", "crop", "up2", "narrow", "tight+pad", "crop+pad",
                "small+levels"}
EXPECT_NONE = {"blank", "tiny", "tight"}


def iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def to_decoded(u, num, den):
    """facemill's original-image coordinate back to decoded pixels."""
    return u if num == den else (u + 0.5) * num / den - 0.5


def compare(name, got, ref, worst):
    """Returns (ok, summary line); worst (IoU deficit, landmark px, score) is updated."""
    if len(got) != len(ref):
        return False, "%-14s faces: facemill %d, reference %d" % (name, len(got), len(ref))
    pairs = sorted(((iou(g["box"], r["box"]), i, k) for i, g in enumerate(got)
                    for k, r in enumerate(ref)), reverse=True)
    used_g, used_r, matched = set(), set(), []
    for v, i, k in pairs:
        if i not in used_g and k not in used_r:
            used_g.add(i)
            used_r.add(k)
            matched.append((v, got[i], ref[k]))
    worst_iou, worst_lm, worst_score = 1.0, 0.0, 0.0
    for v, g, r in matched:
        worst_iou = min(worst_iou, v)
        for (gx, gy), (rx, ry) in zip(g["landmarks"], r["landmarks"]):
            worst_lm = max(worst_lm, ((gx - rx) ** 2 + (gy - ry) ** 2) ** 0.5)
        worst_score = max(worst_score, abs(g["score"] - r["score"]))
    ok = (1.0 - worst_iou <= MAX_IOU_DEFICIT and worst_lm <= MAX_LANDMARK_PX
          and worst_score <= MAX_SCORE_DIFF)
    worst[0] = max(worst[0], 1.0 - worst_iou)
    worst[1] = max(worst[1], worst_lm)
    worst[2] = max(worst[2], worst_score)
    return ok, ("%-14s faces %2d  max IoU deficit %.2e  max landmark error %.2e px  "
                "max score diff %.2e" % (name, len(ref), 1.0 - worst_iou, worst_lm,
                                          worst_score))


def run_facemill(bindir, cache, ppm, images, extra):
    """facemill detect on images; returns the parsed lines or None."""
    env = dict(os.environ)
    env.pop("FACEMILL_CONFIG", None)  # the built-in defaults, as the reference
    # one pass, as the reference: the second look (detect.retry) is test_detect's
    cmd = [os.path.join(bindir, "facemill"), "detect", "--set", "models.dir=" + cache,
           "--set", "detect.retry=false", "--ppm-dir", ppm] + extra + images
    res = subprocess.run(cmd, stdout=subprocess.PIPE, env=env)
    if res.returncode != 0:
        print("test_mtcnn_ref: %s exited %d" % (" ".join(cmd), res.returncode))
        return None
    lines = [json.loads(l) for l in res.stdout.decode().splitlines() if l.strip()]
    if len(lines) != len(images):
        print("test_mtcnn_ref: %d result lines for %d images" % (len(lines), len(images)))
        return None
    return lines


def check_image(det, mtcnn_ref, name, path, out, ppm, pad, worst, frac=MIN_FACE_FRAC):
    """Compares one facemill result with the reference; returns True when it agrees."""
    if out.get("source") != path or out.get("error") is not None:
        print("FAIL  %-14s facemill error: %s" % (name, out.get("error")))
        return False
    num, den = out["scale"]
    img = mtcnn_ref.read_ppm(os.path.join(ppm, os.path.splitext(os.path.basename(path))[0]
                                          + ".ppm"))
    p = 0
    if pad > 0:
        import numpy as np
        p = int(math.floor(pad * max(img.shape[0], img.shape[1]) + 0.5))
        img = np.pad(img, ((p, p), (p, p), (0, 0)), constant_values=PAD_VALUE)
    # the smallest face searched: min_face or frac of the original's long side
    min_search = max(MIN_FACE, frac * max(out["width"], out["height"])) * num / den
    ref = det.detect(img, MIN_FACE * num / den, FACTOR, THRESHOLDS, MAX_SIDE,
                     min_search=min_search)
    for r in ref:  # back to the unpadded image
        r["box"] = [v - p for v in r["box"]]
        r["landmarks"] = [[x - p, y - p] for x, y in r["landmarks"]]
    got = []
    for f in out["faces"]:  # the result schema (proto/RESULTS.md)
        got.append({"box": [to_decoded(f["box"][k], num, den)
                            for k in ("x1", "y1", "x2", "y2")],
                    "score": f["score"],
                    "landmarks": [[to_decoded(f["landmarks"][k]["x"], num, den),
                                   to_decoded(f["landmarks"][k]["y"], num, den)]
                                  for k in LANDMARKS]})
    ok, line = compare(name, got, ref, worst)
    if name in EXPECT_FACES and not ref:
        ok, line = False, line + "  (expected faces)"
    if name in EXPECT_NONE and ref:
        ok, line = False, line + "  (expected none)"
    print("%s  %dx%d at %d/%d  %s" % ("ok  " if ok else "FAIL", img.shape[1] - 2 * p,
                                     img.shape[0] - 2 * p, num, den, line))
    return ok


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--images-tool", required=True)
    ap.add_argument("--keep", help="work in this directory and keep it")
    args = ap.parse_args(argv)
    src = source_dir()
    bindir = bin_dir()
    if not bindir:
        print("test_mtcnn_ref: FACEMILL_BIN_DIR is not set", file=sys.stderr)
        return 1
    cache = os.path.join(src, "models", "cache")
    samples = os.path.join(cache, "samples")
    needed = [os.path.join(cache, "mtcnn_%s.fmm" % n) for n in ("pnet", "rnet", "onet")]
    needed += [os.path.join(samples, "sample%d.jpg" % i) for i in range(1, 7)]
    missing = [p for p in needed if not os.path.exists(p)]
    if missing:
        print("skip: %s missing (run models/fetch)" % missing[0])
        return SKIP
    try:
        import numpy  # noqa: F401
    except ImportError:
        print("test_mtcnn_ref: numpy is required", file=sys.stderr)
        return 1
    sys.path.insert(0, os.path.join(src, "tests", "reference"))
    import mtcnn_ref

    work = args.keep or tempfile.mkdtemp(prefix="facemill-mtcnn-")
    try:
        gen = os.path.join(work, "gen")
        ppm = os.path.join(work, "ppm")
        os.makedirs(gen, exist_ok=True)
        os.makedirs(ppm, exist_ok=True)
        subprocess.run([args.images_tool, samples, gen], check=True)
        images = [os.path.join(samples, "sample%d.jpg" % i) for i in range(1, 7)]
        images += [os.path.join(gen, n + ".jpg") for n in GENERATED]
        lines = run_facemill(bindir, cache, ppm, images, [])
        pad_images = [os.path.join(gen, n + ".jpg") for n in PADDED]
        pad_lines = run_facemill(bindir, cache, ppm, pad_images,
                                 ["--set", "detect.pad=%g" % PAD])
        all_images = [os.path.join(samples if n.startswith("sample") else gen, n + ".jpg")
                      for n in ALL_LEVELS]
        all_lines = run_facemill(bindir, cache, ppm, all_images,
                                 ["--set", "detect.min_face_frac=0"])
        if lines is None or pad_lines is None or all_lines is None:
            return 1
        det = mtcnn_ref.Detector(cache)
        failed = 0
        worst = [0.0, 0.0, 0.0]
        for path, out in zip(images, lines):
            name = os.path.splitext(os.path.basename(path))[0]
            failed += not check_image(det, mtcnn_ref, name, path, out, ppm, 0, worst)
        for path, out in zip(pad_images, pad_lines):
            name = os.path.splitext(os.path.basename(path))[0] + "+pad"
            failed += not check_image(det, mtcnn_ref, name, path, out, ppm, PAD, worst)
        for path, out in zip(all_images, all_lines):
            name = os.path.splitext(os.path.basename(path))[0] + "+levels"
            failed += not check_image(det, mtcnn_ref, name, path, out, ppm, 0, worst, 0.0)
        n_default = {os.path.splitext(os.path.basename(p))[0]: len(o["faces"])
                     for p, o in zip(images, lines)}
        n_all = {os.path.splitext(os.path.basename(p))[0]: len(o["faces"])
                 for p, o in zip(all_images, all_lines)}
        if not n_default["small"] < n_all["small"]:
            print("FAIL  small: %d faces with the default min_face_frac, %d with every level "
                  "(the levels for faces under 2.5%% of the long side were not skipped)"
                  % (n_default["small"], n_all["small"]))
            failed += 1
        images += pad_images + all_images
        print("test_mtcnn_ref: worst of paired faces: IoU deficit %.2e (bound %g), landmark "
              "error %.2e px (bound %g), score difference %.2e (bound %g)"
              % (worst[0], MAX_IOU_DEFICIT, worst[1], MAX_LANDMARK_PX, worst[2],
                 MAX_SCORE_DIFF))
        print("test_mtcnn_ref: %d images, %d failed" % (len(images), failed))
        return 1 if failed else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
