#!/usr/bin/python3
"""fmmsoup - the weighted mean of networks fine-tuned from the same network ("model soup").

Networks fine-tuned from one starting point often lie in one basin of the loss, where
the mean of their weights is itself a good network, and often better on data unlike
the training data than either (Wortsman et al., "Model soups", 2022). This writes
that mean for facemill model files of the same architecture: every tensor name and
shape must match. Weights are averaged in float64 and stored as float32 (f16 inputs
are read exactly). Heads are not averaged: heads trained from different random
starts are not comparable weight for weight; train new heads on the mean.

    /usr/bin/python3 models/tools/fmmsoup.py -o soup.fmm A.fmm B.fmm [--weights 0.5,0.5]

The output's metadata: the first input's architecture, input and alignment keys, a
name saying what it is, and soup.members (each input's SHA-256 and name),
soup.weights and soup.commands (each input's train.command, where it has one).
"""

import argparse
import hashlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fmmodel import read_model, write_model  # noqa: E402

KEEP = ("general.architecture", "general.converter", "input.size", "input.mean", "input.scale",
        "align.template")


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", help="two or more .fmm networks")
    ap.add_argument("-o", "--output", required=True, help="the mean to write")
    ap.add_argument("--weights", help="comma-separated weights (default: equal)")
    args = ap.parse_args(argv)
    if len(args.inputs) < 2:
        ap.error("give two or more networks")
    if args.weights:
        weights = [float(x) for x in args.weights.split(",")]
        if len(weights) != len(args.inputs) or any(w < 0 for w in weights) or sum(weights) <= 0:
            ap.error("--weights: one non-negative weight per input, not all zero")
    else:
        weights = [1.0] * len(args.inputs)
    total = sum(weights)
    weights = [w / total for w in weights]

    models = [(meta, list(tensors.items())) for meta, tensors in map(read_model, args.inputs)]
    meta0, tensors0 = models[0]
    names0 = [name for name, _ in tensors0]
    for path, (meta, tensors) in zip(args.inputs[1:], models[1:]):
        if meta.get("general.architecture") != meta0.get("general.architecture"):
            sys.exit(f"fmmsoup: {path}: architecture {meta.get('general.architecture')!r}, "
                     f"not {meta0.get('general.architecture')!r}")
        names = [name for name, _ in tensors]
        if names != names0:
            sys.exit(f"fmmsoup: {path}: tensors differ from {args.inputs[0]}'s")
        for (name, a), (_, b) in zip(tensors0, tensors):
            if a.shape != b.shape:
                sys.exit(f"fmmsoup: {path}: {name} is {b.shape}, not {a.shape}")

    out = []
    for i, name in enumerate(names0):
        acc = np.zeros(tensors0[i][1].shape, dtype=np.float64)
        for w, (_, tensors) in zip(weights, models):
            acc += w * tensors[i][1].astype(np.float64)
        if not np.all(np.isfinite(acc)):
            sys.exit(f"fmmsoup: {name}: the mean is not finite")
        out.append((name, acc.astype(np.float32)))

    meta = {k: meta0[k] for k in KEEP if k in meta0}
    meta["general.name"] = "dlib ResNet: the mean of %d fine-tuned networks" % len(models)
    meta["general.source"] = "trained:facemill"
    meta["soup.members"] = ["%s %s" % (sha256_of(p), os.path.basename(p)) for p in args.inputs]
    meta["soup.weights"] = [float(w) for w in weights]
    meta["soup.commands"] = [str(m.get("train.command", "")) for m, _ in models]
    write_model(args.output, meta, out)
    diffs = [float(np.max(np.abs(a - b[1]))) for (_, a), b in zip(out, tensors0)]
    print("fmmsoup: %s: %d tensors, weights %s; largest change from the first input %.4g"
          % (args.output, len(out), ",".join("%.3g" % w for w in weights), max(diffs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
