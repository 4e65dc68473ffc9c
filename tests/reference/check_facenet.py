#!/usr/bin/python3
"""check_facenet: facemill's FaceNet Inception-ResNet-v1 (models/tools/facenet2fmm.py +
worker/vision/arch_facenet.c) computes what the PyTorch definition in facenet_ref.py computes.

The pretrained checkpoint cannot be downloaded where this runs, so the check uses a
seeded random state dict with the checkpoint's keys and shapes (facenet_ref.py
make_state: batch-norm statistics taken from the network's own activations, then
perturbed), converts it with facenet2fmm.py as a user would, runs the same raw
160x160 RGB faces through facemill's backbone (facemill-embed-tool embed) and through
the PyTorch reference, and compares both outputs:
    rel = max |facemill - reference| / max |reference|, per face, worst face reported,
for "embedding" (512-d, L2-normalised) and "pooled" (1792-d); both must be <= 1e-4:
they agree to 7.9e-6 and 3.2e-6 (float32 rounding through 100-odd layers), so that is
13-30x headroom for kernels that round differently, while the weights of one layer
(conv2d_2b) off by 2e-5 of their value fail it. The embeddings' lengths must be 1
within 1e-6 (they are within 4e-8).
It also checks the converter's loading of wrapped checkpoints, its refusal of a wrong
state dict, and the metadata it writes.

    check_facenet.py --tool PATH/facemill-embed-tool [--keep DIR]

Exit 0 when everything matches, 1 on a mismatch, 77 (skip) when python3-torch is not
installed.
"""

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

try:
    import torch  # noqa: E402
except ImportError:
    print("check_facenet: python3-torch is not installed; skipped")
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
TOOLS = os.path.join(REPO, "models", "tools")
sys.path.insert(0, TOOLS)
sys.path.insert(0, HERE)
import facenet2fmm  # noqa: E402
import facenet_ref  # noqa: E402
from fmmodel import read_model, write_model  # noqa: E402

TOL = 1e-4
UNIT_TOL = 1e-6
SEED = 20180402
SIZE = 160


def make_faces(rng):
    """Four test inputs, uint8 [4, 160, 160, 3]: two uniform-noise images, one smooth
    random image (coarse noise upsampled) and a colour gradient."""
    faces = rng.integers(0, 256, size=(4, SIZE, SIZE, 3), dtype=np.uint8)
    coarse = rng.integers(0, 256, size=(10, 10, 3)).astype(np.float64)
    faces[2] = np.kron(coarse, np.ones((16, 16, 1))).astype(np.uint8)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    faces[3, :, :, 0] = xx * 255 // (SIZE - 1)
    faces[3, :, :, 1] = yy * 255 // (SIZE - 1)
    faces[3, :, :, 2] = 255 - (xx + yy) * 255 // (2 * SIZE - 2)
    return faces


def rel_error(got, want):
    """Worst face's max |got - want| / max |want|."""
    worst = 0.0
    for g, w in zip(got, want):
        worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - w)) /
                                 max(float(np.max(np.abs(w))), 1e-30)))
    return worst


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", required=True, help="facemill-embed-tool executable")
    ap.add_argument("--keep", help="write the files here and keep them")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    failures = []

    def check(ok, what):
        print("%s: %s" % ("ok" if ok else "FAIL", what))
        if not ok:
            failures.append(what)

    tmp = None
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        work = args.keep
    else:
        tmp = tempfile.TemporaryDirectory(prefix="check_facenet.")
        work = tmp.name
    t0 = time.time()

    sd = facenet_ref.make_state(SEED)
    sd_path = os.path.join(work, "facenet_random.pt")
    torch.save(sd, sd_path)
    t_state = time.time()

    # Loading: the bare state dict, a checkpoint dict, DataParallel names, a module.
    bare = facenet2fmm.extract_state_dict(sd)
    check(list(bare) == list(sd), "bare state dict accepted as is")
    wrapped = facenet2fmm.extract_state_dict({"epoch": 3, "state_dict": collections.OrderedDict(
        ("module." + k, v) for k, v in sd.items())})
    check(list(wrapped) == list(sd), "checkpoint dict with module. prefixes unwrapped")
    net = facenet_ref.load_net(sd)
    check(list(facenet2fmm.extract_state_dict(net)) == list(sd), "module accepted")

    # Refusals: a missing key, a wrong shape, an unknown key.
    np_sd = collections.OrderedDict((k, v.numpy()) for k, v in sd.items())
    for what, bad in (
            ("missing key", {k: v for k, v in np_sd.items() if k != "repeat_2.3.conv2d.bias"}),
            ("wrong shape", dict(np_sd, **{"block8.branch1.1.conv.weight":
                                           np.zeros((192, 192, 3, 1), np.float32)})),
            ("unknown key", dict(np_sd, **{"repeat_4.0.conv2d.weight": np.zeros(1)}))):
        try:
            facenet2fmm.convert_state(bad)
            check(False, "converter refuses a state dict with a %s" % what)
        except facenet2fmm.ConvertError as e:
            check(True, "converter refuses a state dict with a %s (%s)" % (what, e))

    # Convert as a user would.
    fmm = os.path.join(work, "facenet_random.fmm")
    r = subprocess.run([sys.executable, os.path.join(TOOLS, "facenet2fmm.py"), "convert",
                        sd_path, "-o", fmm], capture_output=True, text=True)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    check(r.returncode == 0, "facenet2fmm.py convert exits 0")
    if r.returncode:
        return 1
    t_conv = time.time()
    meta, tensors = read_model(fmm)
    check(meta.get("general.architecture") == "facenet_irv1", "architecture facenet_irv1")
    check(meta.get("input.size") == [160, 160], "input.size [160, 160]")
    check(meta.get("input.mean") == [127.5] * 3 and meta.get("input.scale") == [0.0078125] * 3,
          "input.mean 127.5, input.scale 1/128")
    tmpl = meta.get("align.template", [])
    check(len(tmpl) == 10 and all(0 < v < SIZE for v in tmpl) and tmpl[0] < tmpl[2],
          "align.template: 10 values inside the crop, left eye left of right eye")
    check("logits.weight" not in tensors and "last_bn.weight" not in tensors and
          len(tensors) == 266, "266 tensors, no batch norm, no classifier")

    # Same faces through facemill and the reference.
    faces = make_faces(np.random.default_rng(SEED))
    paths = []
    for i, f in enumerate(faces):
        p = os.path.join(work, "face%d.rgb" % i)
        f.tofile(p)
        paths.append(p)
    out = os.path.join(work, "facemill.f32")
    t1 = time.time()
    r = subprocess.run([args.tool, "embed", fmm, out] + paths, capture_output=True, text=True)
    t_c = time.time() - t1
    sys.stderr.write(r.stderr)
    check(r.returncode == 0, "facemill-embed-tool embed exits 0")
    if r.returncode:
        return 1
    n = len(faces)
    c_emb = np.fromfile(out, dtype=np.float32).reshape(n, -1)
    c_pool = np.fromfile(out + ".pooled", dtype=np.float32).reshape(n, -1)
    t1 = time.time()
    r_pool, r_emb = facenet_ref.forward(net, faces)
    t_ref = time.time() - t1

    check(c_emb.shape == (n, 512) and c_pool.shape == (n, 1792),
          "output shapes %s and %s" % (c_emb.shape, c_pool.shape))
    check(bool(np.all(np.isfinite(c_emb)) and np.all(np.isfinite(c_pool))), "outputs finite")
    e_emb, e_pool = rel_error(c_emb, r_emb), rel_error(c_pool, r_pool)
    print("embedding: max relative error %.3g (max abs %.3g; tolerance %g)"
          % (e_emb, float(np.max(np.abs(c_emb - r_emb))), TOL))
    print("pooled:    max relative error %.3g (max abs %.3g, reference max %.3g; tolerance %g)"
          % (e_pool, float(np.max(np.abs(c_pool - r_pool))), float(np.max(np.abs(r_pool))), TOL))
    check(e_emb <= TOL, "embedding matches the reference")
    check(e_pool <= TOL, "pooled matches the reference")
    norms = np.linalg.norm(c_emb.astype(np.float64), axis=1)
    check(bool(np.all(np.abs(norms - 1) <= UNIT_TOL)),
          "embeddings have unit length (largest |length - 1| %.2e; tolerance %g)"
          % (float(np.max(np.abs(norms - 1))), UNIT_TOL))
    cos = c_emb @ c_emb.T
    off = cos[~np.eye(n, dtype=bool)]
    check(bool(np.max(off) < 0.999), "faces give different embeddings (max cosine %.4f)"
          % np.max(off))
    # Broken files: the C builder refuses them with a message naming what is wrong.
    names = list(tensors)
    cut = names.index("repeat_1.2.branch2.1.conv.bias")
    small = [(k, tensors[k]) for k in names[:cut]]
    no_scale = {k: v for k, v in meta.items() if k != "facenet_irv1.scale.block17"}
    bad_shape = [("conv2d_1a.conv.weight", np.zeros((32, 3, 5, 5), np.float32))] + small[1:]
    for what, m, t, needle in (
            ("a missing tensor", meta, small, "repeat_1.2.branch2.1.conv.bias"),
            ("missing residual scale", no_scale, small, "facenet_irv1.scale.block17"),
            ("a wrong kernel shape", meta, bad_shape, "conv2d_1a.conv.weight")):
        p = os.path.join(work, "broken.fmm")
        write_model(p, m, t)
        r = subprocess.run([args.tool, "embed", p, out, paths[0]], capture_output=True,
                           text=True)
        check(r.returncode == 1 and needle in r.stderr,
              "a file with %s is refused: %s" % (what, r.stderr.strip()))

    print("times: random state %.1f s, convert %.1f s, facemill %d faces %.2f s (process), "
          "reference %.2f s" % (t_state - t0, t_conv - t_state, n, t_c, t_ref))

    if tmp:
        tmp.cleanup()
    print("check_facenet: %d failed" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
