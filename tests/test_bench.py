#!/usr/bin/python3
"""test_bench.py - `facemill bench` measures what it says it measures.

    test_bench.py --bin BUILD/bin

Runs the benchmark briefly (a fixed count of images, not a time) and checks its
figures for consistency, never for speed:
  - --json: the machine and settings; per case the image count (count x processes),
    no failures, the sample photos' faces found, the stages' milliseconds adding up
    to the wall time (P-Net, R-Net and O-Net within detect), shares summing to 1,
    positive GFLOPS and memory;
  - the work it reports against the networks' layer shapes, counted here
    independently: R-Net 3,061,536 FLOP per 24x24 crop, O-Net 25,819,904 per 48x48
    crop, the dlib ResNet 0.5416 GFLOP per chip, P-Net at most 3,660 FLOP per pyramid
    pixel plus the strips' overlap;
  - --chips DIR takes the chips from that folder; the table output; errors (no
    chips, a bad option, --seconds with --count) exit 1 and 2;
  - facemill-bench-detect --only 640: the 640x480 image's line (its 3 faces) between
    the two cblas_sgemm lines it prints; with --no-speed, a usage error;
  - ops/bench/faceapi/compare's help and usage errors (exit 2; face-api.js itself
    is not run: it needs node and the npm registry).
Skips (77) without the models and sample photos (models/fetch). The environment's
OPENBLAS_CORETYPE passes through unchanged.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fm_testlib import Checks, run, source_dir, user_env  # noqa: E402

# Work per unit, from the layer shapes (2 FLOP per multiply-add of every convolution
# and dense layer; valid convolutions, Caffe ceil-mode pooling).
RNET_FLOP = 2 * (22 * 22 * 28 * 27 + 9 * 9 * 48 * 28 * 9 + 3 * 3 * 64 * 48 * 4 +
                 576 * 128 + 128 * 2 + 128 * 4)
ONET_FLOP = 2 * (46 * 46 * 32 * 27 + 21 * 21 * 64 * 32 * 9 + 8 * 8 * 64 * 64 * 9 +
                 3 * 3 * 128 * 64 * 4 + 1152 * 256 + 256 * (2 + 4 + 10))
# dlib ResNet at 150x150: (count, output side, channels out, fan-in) per convolution
DLIB_CONVS = [(1, 72, 32, 3 * 49), (6, 35, 32, 32 * 9), (1, 17, 64, 32 * 9),
              (7, 17, 64, 64 * 9), (1, 8, 128, 64 * 9), (5, 8, 128, 128 * 9),
              (1, 3, 256, 128 * 9), (1, 3, 256, 256 * 9), (4, 4, 256, 256 * 9),
              (2, 1, 256, 256 * 9)]
DLIB_FLOP = 2 * 256 * 128 + sum(2 * n * s * s * c * k for n, s, c, k in DLIB_CONVS)
PNET_FLOP_PER_PIXEL = 2 * (10 * 27 + (16 * 90 + 32 * 144 + 6 * 32) / 4)  # 3,660
STAGES = ["decode", "detect", "align", "embed", "heads", "other"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    a = ap.parse_args()
    facemill = os.path.join(a.bin, "facemill")
    check = Checks("test_bench")
    tmp = tempfile.mkdtemp(prefix="facemill-test-bench-")
    env = user_env(tmp)
    try:
        # the small images three per process, two per call; the 12 MP photo once, alone
        cases = {}
        for names, count, credit in ((["chips", "photos"], 3, 2), (["12mp"], 1, 1)):
            cmd = [facemill, "bench", "--json", "-j", "2", "--count", str(count), "--set",
                   "worker.credit=%d" % credit]
            for n in names:
                cmd += ["--case", n]
            p = run(cmd, env=env, timeout=1500)
            if p.returncode != 0 and "sample photo" in p.stderr:
                print("skip: no sample photos (run models/fetch): %s" % p.stderr.strip(),
                      file=sys.stderr)
                return 77
            check(p.returncode == 0, "bench --json exits 0: %s" % p.stderr[-1500:])
            try:
                r = json.loads(p.stdout)
            except ValueError:
                check(False, "bench --json prints one JSON object: %r" % p.stdout[:500])
                return check.summary()
            m = r["machine"]
            check(m["cores"] >= 1 and m["sgemm_gflops"] > 0, "machine: %s" % m)
            check(m["blas_kernels"] and m["blas_reason"], "the kernel set and why: %s" % m)
            check(m.get("engine_kernels") in ("base", "avx2+fma", "avx512"),
                  "the engine's kernels: %s" % m)
            check(r["processes"] == 2 and r["credit"] == credit and r["count"] == count,
                  "settings: %s" % {k: r.get(k) for k in ("processes", "credit", "count")})
            check([c["name"] for c in r["cases"]] == names, "cases: %s" % r["cases"])
            for c in r["cases"]:
                c["expected_images"] = 2 * count
                cases[c["name"]] = c
        for name, c in sorted(cases.items()):
            w = c["per_image"]
            check(c["images"] == c["expected_images"] and c["failed"] == 0,
                  "%s: %d images, none failed: %d, %d" % (name, c["expected_images"],
                                                          c["images"], c["failed"]))
            check(c["images_per_s"] > 0 and
                  abs(c["images_per_s_per_core"] * 2 - c["images_per_s"]) <=
                  1e-3 * c["images_per_s"], "%s: images/s per core" % name)
            ms = c["ms"]
            total = sum(ms[s] for s in STAGES)
            check(abs(total - c["wall_ms"]) <= 1e-3 * c["wall_ms"] + 1e-3,
                  "%s: stages add up to the wall time: %s vs %s" % (name, total,
                                                                    c["wall_ms"]))
            check(all(ms[s] >= 0 for s in STAGES if s != "other") and
                  ms["other"] >= -1e-3 * c["wall_ms"], "%s: times >= 0: %s" % (name, ms))
            nets = ms["pnet"] + ms["rnet"] + ms["onet"]
            check(0 < nets <= ms["detect"] * 1.0001 + 1e-3,
                  "%s: the networks' stages within detect: %s" % (name, ms))
            check(abs(sum(c["share"][s] for s in STAGES) - 1) < 0.01,
                  "%s: shares sum to 1: %s" % (name, c["share"]))
            check(c["gflops"]["pnet"] > 0, "%s: P-Net GFLOPS %s" % (name, c["gflops"]))
            check(c["rss_mib"] > c["pss_mib"] > 0 and c["rss_mib_max"] >= c["rss_mib"],
                  "%s: memory %s / %s" % (name, c["rss_mib"], c["pss_mib"]))
            check(w["pyramid_levels"] >= 1 and w["pyramid_mpixel"] > 0,
                  "%s: pyramid %s" % (name, w))
            # the work against the layer shapes
            px = w["pyramid_mpixel"] * 1e6
            check(0.5 * PNET_FLOP_PER_PIXEL * px < w["pnet_mflop"] * 1e6 <=
                  1.15 * PNET_FLOP_PER_PIXEL * px,
                  "%s: P-Net %.0f FLOP per pyramid pixel" % (name, w["pnet_mflop"] * 1e6 / px))
            if w["rnet_crops"] > 0:
                per = w["rnet_mflop"] * 1e6 / w["rnet_crops"]
                check(abs(per - RNET_FLOP) < 1e-6 * RNET_FLOP,
                      "%s: R-Net %.0f FLOP per crop, expected %d" % (name, per, RNET_FLOP))
            if w["onet_crops"] > 0:
                per = w["onet_mflop"] * 1e6 / w["onet_crops"]
                check(abs(per - ONET_FLOP) < 1e-6 * ONET_FLOP,
                      "%s: O-Net %.0f FLOP per crop, expected %d" % (name, per, ONET_FLOP))
            if w["backbone_chips"] > 0:
                per = w["backbone_mflop"] * 1e6 / w["backbone_chips"]
                check(abs(per - DLIB_FLOP) < 1e-6 * DLIB_FLOP,
                      "%s: backbone %.0f FLOP per chip, expected %d" % (name, per, DLIB_FLOP))
                check(c["gflops"]["backbone"] > 0, "%s: backbone GFLOPS" % name)
        ph = cases.get("photos", {})
        if ph:
            # the sample photos have 2 to 5 faces each, each embedded with its mirror
            check(2 <= ph["faces_per_image"] <= 5, "photos: faces per image %s" %
                  ph["faces_per_image"])
            check(abs(ph["per_image"]["backbone_chips"] - 2 * ph["faces_per_image"]) < 1e-9,
                  "photos: a chip per face and its mirror: %s" % ph["per_image"])
        ch = cases.get("chips", {})
        if ch:
            check(ch["distinct_images"] >= 10 and "cut from the sample photos" in ch["source"],
                  "chips: %s" % ch["source"])
            check(ch["faces_per_image"] >= 0.5, "chips: faces found in the generated chips: "
                  "%s" % ch["faces_per_image"])
        if cases.get("12mp"):
            check("4000x3000" in cases["12mp"]["source"], "12mp: %s" % cases["12mp"]["source"])

        # --chips DIR: those files, and only those
        chips = os.path.join(tmp, "chips")
        os.mkdir(chips)
        samples = os.path.join(os.path.dirname(os.path.abspath(a.bin)), "..")
        src = None
        for d in (os.environ.get("FACEMILL_SOURCE_DIR", ""), samples):
            cand = os.path.join(d, "models", "cache", "samples")
            if os.path.isdir(cand):
                src = cand
                break
        if check(src is not None, "the sample photos' folder"):
            for n in ("sample2.jpg", "sample4.jpg"):
                shutil.copy(os.path.join(src, n), os.path.join(chips, "x-" + n))
            open(os.path.join(chips, "notes.txt"), "w").write("not an image\n")
            p = run([facemill, "bench", "--json", "--case", "chips", "--chips", chips,
                     "--chips-pad", "0", "--count", "2", "-j", "1", "--set",
                     "worker.credit=1"], env=env, timeout=900)
            check(p.returncode == 0, "bench --chips exits 0: %s" % p.stderr[-1000:])
            try:
                c = json.loads(p.stdout)["cases"][0]
                check(c["distinct_images"] == 2 and chips in c["source"] and
                      "detect.pad 0" in c["source"], "--chips: %s" % c["source"])
                # sample2 has 2 faces, sample4 has 5: one of each
                check(c["faces_per_image"] == 3.5, "--chips: faces %s" % c["faces_per_image"])
            except (ValueError, KeyError, IndexError):
                check(False, "bench --chips --json: %r" % p.stdout[:300])

        # the table
        p = run([facemill, "bench", "--case", "photos", "--count", "1", "-j", "1", "--set",
                 "worker.credit=1"], env=env, timeout=900)
        check(p.returncode == 0, "bench exits 0: %s" % p.stderr[-1000:])
        for text in ("images/s per core", "P-Net", "R-Net", "O-Net", "embed (backbone)",
                     "cblas_sgemm 1024^3, 1 thread", "BLAS kernels", "PSS", "GFLOPS"):
            check(text in p.stdout, "the table shows %r" % text)

        # errors
        empty = os.path.join(tmp, "empty")
        os.mkdir(empty)
        p = run([facemill, "bench", "--case", "chips", "--chips", empty, "--count", "1"],
                env=env, timeout=300)
        check(p.returncode == 1 and "no .jpg or .jpeg files" in p.stderr,
              "an empty --chips folder: exit 1 with a reason: %d %s" % (p.returncode,
                                                                       p.stderr[-300:]))
        for bad in (["--case", "video"], ["--count", "0"], ["-j", "x"], ["--frobnicate"]):
            p = run([facemill, "bench"] + bad, env=env, timeout=60)
            check(p.returncode == 2, "%s: exit 2, got %d" % (" ".join(bad), p.returncode))
        # [--seconds S | --count N]: both are a usage error, alone in one line, before
        # anything is measured (one image of one case, were it measured)
        p = run([facemill, "bench", "--seconds", "1", "--count", "1", "--case", "photos",
                 "-j", "1"], env=env, timeout=300)
        check(p.returncode == 2 and not p.stdout and p.stderr.count("\n") == 1 and
              "--seconds and --count exclude each other" in p.stderr,
              "--seconds with --count: exit 2, one line naming both: %d %s"
              % (p.returncode, p.stderr[-300:]))

        # facemill-bench-detect: --only picks an image of part 1, which --no-speed skips
        detect = os.path.join(os.path.dirname(facemill), "facemill-bench-detect")
        p = run([detect, "--only", "640", "--no-speed", "--repeat", "1"], env=env,
                timeout=300)
        check(p.returncode == 2 and not p.stdout and
              p.stderr.startswith("facemill-bench-detect: --only and --no-speed exclude "
                                  "each other"),
              "bench-detect --only 640 --no-speed: exit 2 naming both: %d %s"
              % (p.returncode, (p.stdout + p.stderr)[-300:]))

        # facemill-bench-detect: the 640x480 image once, between two sgemm figures
        p = run([detect, "--only", "640", "--repeat", "1"], env=env, timeout=300)
        lines = p.stdout.splitlines()
        at = [i for i, x in enumerate(lines) if x.startswith("640x480 ")]
        sg = [i for i, x in enumerate(lines) if x.startswith("cblas_sgemm 1024^3, 1 thread")]
        check(p.returncode == 0 and len(at) == 1 and "3 faces" in lines[at[0]] and
              len(sg) == 2 and sg[0] < at[0] < sg[1] and
              all(lines[i].endswith(" GFLOPS") for i in sg),
              "bench-detect --only 640: the image's line between two sgemm lines: %d %s" % (
                  p.returncode, (p.stdout + p.stderr)[-600:]))

        # ops/bench/faceapi/compare (face-api.js itself needs node and the npm registry,
        # so only what runs before it: the help and the usage errors)
        compare = os.path.join(source_dir(), "ops", "bench", "faceapi", "compare")
        p = run([compare, "--help"], env=env, timeout=60)
        check(p.returncode == 0 and "--pairs" in p.stdout and "median" in p.stdout,
              "compare --help: %d %s" % (p.returncode, (p.stdout + p.stderr)[-300:]))
        for bad in (["--pairs", "0"], ["--seconds", "x"], ["--set", "novalue"],
                    ["--rounds"], ["--frobnicate"]):
            p = run([compare] + bad, env=env, timeout=60)
            check(p.returncode == 2 and "Usage:" in p.stderr,
                  "compare %s: exit 2 with the usage, got %d %s" % (" ".join(bad), p.returncode,
                                                                   p.stderr[-200:]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
