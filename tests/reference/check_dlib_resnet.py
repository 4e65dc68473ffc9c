#!/usr/bin/python3
"""check_dlib_resnet: facemill's dlib ResNet backbone agrees with face-api.js itself.

Why this exists: the backbone is a C reimplementation (worker/vision/arch_dlib_resnet.c)
of a network we only have as converted TensorFlow.js weights. Agreement with the original
library, run by TensorFlow.js's pure JavaScript CPU backend, is the test that the
conversion, the layer geometry and the engine are all right.

What it does:
  1. inputs: facemill-embed-tool cuts 150x150 faces-or-not out of the sample photos
     (models/cache/samples/, centre squares of the short side and of half of it,
     decoded and resized by facemill), and numpy adds random-noise images (uniform,
     and smooth low-frequency noise), all as raw RGB files;
  2. facemill: facemill-embed-tool embed runs them through models/cache/dlib_resnet.fmm
     in one batch;
  3. library: tests/reference/faceapi/embed.js runs face-api@1.7.15's
     faceRecognitionNet on the same files (TensorFlow.js installed by
     tests/reference/faceapi/setup into models/cache/node);
  4. compares the 128-d descriptors of every input: 1 - cosine similarity must be
     <= 4e-11 and the relative L2 error |facemill - library| / |library| <= 1e-5;
     prints both for each input and the worst of each.

The bounds: the two agree to float32 rounding (worst 1 - cos 4.1e-13, relative error
9.1e-7 on the machine they were set on). The relative error bound is 11x that, the
cosine bound 100x (1 - cos grows as the square of the error, so that is the same
10x), headroom for OpenBLAS kernels that round differently. The library's input one
level brighter in its odd-valued pixels, or one layer's weights off by 1e-4 of their
value, fails them.

Usage: check_dlib_resnet.py --cache models/cache --tool build/tests/facemill-embed-tool
Exit: 0 pass, 1 fail, 77 skipped: the model is not fetched, node or npm is not
installed, or the npm registry cannot be reached (`npm ping` fails after the install
of TensorFlow.js did); the reason is printed. Any other failure of the install fails
the check, and with CI=true in the environment so does an unreachable registry.
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_COS_DEFICIT = 4e-11
MAX_REL_ERR = 1e-5
SIZE = 150
SKIP = 77


def skip(why):
    print("check_dlib_resnet: SKIP: %s" % why)
    return SKIP


def in_ci():
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def registry_reachable():
    """Whether npm reaches its registry (`npm ping`, npm's own configuration)."""
    try:
        p = subprocess.run(["npm", "ping", "--fetch-retries=1", "--fetch-timeout=30000"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=120)
    except subprocess.TimeoutExpired:
        return False, "npm ping: no answer within 120 s"
    lines = p.stdout.strip().splitlines()
    return p.returncode == 0, "\n".join(lines[:4] + (["..."] if len(lines) > 4 else []))


def setup_failed(stderr):
    """The verdict when tests/reference/faceapi/setup failed: a skip only when the
    registry cannot be reached (and not in CI); any other failure is the check's."""
    print("check_dlib_resnet: installing TensorFlow.js failed:\n%s" % stderr.rstrip())
    reachable, ping = registry_reachable()
    print("check_dlib_resnet: npm ping: %s" % (ping or "(no output)"))
    if reachable:
        print("check_dlib_resnet: FAIL: the registry answers, so the install itself failed")
        return 1
    if in_ci():
        print("check_dlib_resnet: FAIL: the npm registry is unreachable and CI is set: "
              "the check must run in CI")
        return 1
    return skip("the npm registry is unreachable: the library cannot be installed")


def noise_images(rng):
    """Random inputs: two uniform-noise images and two smooth ones."""
    out = {}
    for i in range(2):
        out["noise-uniform-%d" % i] = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(2):
        coarse = rng.uniform(0, 255, (6, 6, 3))
        idx = np.linspace(0, 5, SIZE)
        lo = np.floor(idx).astype(int).clip(0, 4)
        f = (idx - lo)[:, None]
        rows = coarse[lo] * (1 - f[:, :, None]) + coarse[lo + 1] * f[:, :, None]
        img = rows[:, lo] * (1 - f[None, :, :]) + rows[:, lo + 1] * f[None, :, :]
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255)
        out["noise-smooth-%d" % i] = img.astype(np.uint8)
    return out


def run(cmd, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if p.returncode != 0:
        what = " ".join(os.path.basename(c) for c in cmd[:2])
        raise RuntimeError("%s failed (exit %d):\n%s%s" % (what, p.returncode, p.stdout,
                                                           p.stderr))
    return p.stdout


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", required=True, help="models/cache")
    ap.add_argument("--tool", required=True, help="the facemill-embed-tool program")
    ap.add_argument("--keep", help="keep the inputs and outputs in this directory")
    args = ap.parse_args(argv)

    model = os.path.join(args.cache, "dlib_resnet.fmm")
    faceapi_dir = os.path.join(args.cache, "faceapi")
    samples = sorted(glob.glob(os.path.join(args.cache, "samples", "*.jpg")))
    if not (os.path.isfile(model)
            and os.path.isfile(os.path.join(faceapi_dir, "face-api.node-wasm.js"))):
        return skip("%s or %s/ missing: run models/fetch" % (model, faceapi_dir))
    if not samples:
        return skip("no sample photos in %s/samples: run models/fetch" % args.cache)
    if not shutil.which("node") or not shutil.which("npm"):
        return skip("node and npm are needed to run the library")
    setup = subprocess.run([os.path.join(HERE, "faceapi", "setup"), "-q", args.cache],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if setup.returncode != 0:
        return setup_failed(setup.stderr)
    node_path = setup.stdout.strip().splitlines()[-1]

    work = args.keep or tempfile.mkdtemp(prefix="check_dlib_resnet.")
    os.makedirs(work, exist_ok=True)
    try:
        files = run([args.tool, "crops", str(SIZE), work] + samples).split()
        rng = np.random.default_rng(20240611)
        for name, img in noise_images(rng).items():
            path = os.path.join(work, name + ".rgb")
            img.tofile(path)
            files.append(path)

        ours_path = os.path.join(work, "facemill.f32")
        lib_path = os.path.join(work, "faceapi.f32")
        run([args.tool, "embed", model, ours_path] + files)
        env = dict(os.environ, NODE_PATH=node_path)
        run(["node", os.path.join(HERE, "faceapi", "embed.js"), faceapi_dir, lib_path] + files,
            env=env)

        ours = np.fromfile(ours_path, np.float32).reshape(len(files), -1).astype(np.float64)
        lib = np.fromfile(lib_path, np.float32).reshape(len(files), -1).astype(np.float64)
        if ours.shape != lib.shape or ours.shape[1] != 128:
            print("check_dlib_resnet: FAIL: shapes %s (facemill) and %s (library)"
                  % (ours.shape, lib.shape))
            return 1
        cos = (ours * lib).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(lib, axis=1))
        rel = np.linalg.norm(ours - lib, axis=1) / np.linalg.norm(lib, axis=1)
        print("%-24s %14s %10s %12s %8s" % ("input (150x150)", "cosine", "1 - cos",
                                             "rel. L2 err", "|lib|"))
        for f, c, r, n in zip(files, cos, rel, np.linalg.norm(lib, axis=1)):
            print("%-24s %14.10f %10.1e %12.2e %8.4f" % (os.path.basename(f), c, 1 - c, r, n))
        worst, worst_rel = int(np.argmin(cos)), int(np.argmax(rel))
        print("check_dlib_resnet: %d inputs, minimum cosine %.13f (1 - cos = %.1e, %s; "
              "bound %g), max relative L2 error %.2e (%s; bound %g)"
              % (len(files), cos[worst], 1 - cos[worst], os.path.basename(files[worst]),
                 MAX_COS_DEFICIT, rel[worst_rel], os.path.basename(files[worst_rel]),
                 MAX_REL_ERR))
        if not (np.all(1 - cos <= MAX_COS_DEFICIT) and np.all(rel <= MAX_REL_ERR)):
            print("check_dlib_resnet: FAIL")
            return 1
        print("check_dlib_resnet: PASS")
        return 0
    except RuntimeError as e:
        print("check_dlib_resnet: FAIL: %s" % e)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
