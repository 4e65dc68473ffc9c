"""test_model_soup.py - models/tools/fmmsoup.py, the weighted mean of networks.

Why it exists: a candidate network can be the mean of two fine-tuned ones (models/
EVALUATION.md, soup1); the tool that makes it must average every tensor, refuse
networks that do not match, and say in the file what it was made from. Checked here,
on small written models: the mean with equal and with given weights, to float32
rounding of the float64 mean; an f16 input read exactly; the output passes
`facemill model verify`; its metadata (architecture, input keys, soup.members with
each input's SHA-256, soup.weights, soup.commands); and refusals, with nothing
written: a tensor of another shape, another tensor list, another architecture, one
input, bad weights, a mean that is not finite.
Run by ctest with /usr/bin/python3; exit 77 (skipped) without numpy.
"""

import hashlib
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
except ImportError:
    print("numpy missing: skipped", file=sys.stderr)
    sys.exit(77)

SRC = os.environ.get("FACEMILL_SOURCE_DIR",
                     os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("FACEMILL_BIN_DIR", "")
sys.path.insert(0, os.path.join(SRC, "models", "tools"))
from fmmodel import read_model, write_model  # noqa: E402

TOOL = os.path.join(SRC, "models", "tools", "fmmsoup.py")
failures = 0
checks = 0


def check(cond, what):
    global failures, checks
    checks += 1
    if not cond:
        failures += 1
        print("FAIL: " + what, file=sys.stderr)


def soup(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True)


def model(path, arch, tensors, command=None):
    meta = {"general.architecture": arch, "input.size": [150, 150],
            "input.mean": [1.0, 2.0, 3.0], "general.name": os.path.basename(path)}
    if command:
        meta["train.command"] = command
    write_model(path, meta, tensors)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as d:
        p = lambda name: os.path.join(d, name)  # noqa: E731
        wa = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
        wb = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
        ba = rng.standard_normal(4).astype(np.float32)
        bb = rng.standard_normal(4).astype(np.float32)
        model(p("a.fmm"), "dlib_resnet", [("conv.w", wa), ("conv.b", ba)], "train A")
        model(p("b.fmm"), "dlib_resnet", [("conv.w", wb), ("conv.b", bb)], "train B")

        r = soup("-o", p("ab.fmm"), p("a.fmm"), p("b.fmm"))
        check(r.returncode == 0, "equal weights: exit %d: %s" % (r.returncode, r.stderr))
        meta, t = read_model(p("ab.fmm"))
        want = ((wa.astype(np.float64) + wb.astype(np.float64)) / 2).astype(np.float32)
        check(np.array_equal(t["conv.w"], want), "equal weights: conv.w is not the mean")
        check(np.array_equal(t["conv.b"], ((ba.astype(np.float64) + bb) / 2).astype(np.float32)),
              "equal weights: conv.b is not the mean")
        check(t["conv.w"].dtype == np.float32, "the mean is stored as float32")
        check(meta.get("general.architecture") == "dlib_resnet", "architecture kept")
        check(meta.get("input.mean") == [1.0, 2.0, 3.0], "input keys kept")
        check(meta.get("soup.weights") == [0.5, 0.5], "soup.weights: %r" % meta.get("soup.weights"))
        check(meta.get("soup.members") == ["%s a.fmm" % sha(p("a.fmm")), "%s b.fmm" % sha(p("b.fmm"))],
              "soup.members: %r" % meta.get("soup.members"))
        check(meta.get("soup.commands") == ["train A", "train B"], "soup.commands")
        check("train.command" not in meta, "the inputs' own train.* keys are not copied")
        if BIN and os.path.exists(os.path.join(BIN, "facemill")):
            v = subprocess.run([os.path.join(BIN, "facemill"), "model", "verify", p("ab.fmm")],
                               capture_output=True, text=True)
            check(v.returncode == 0, "facemill model verify: %s" % v.stderr)

        # given weights (normalised), and an f16 input read exactly
        model(p("c.fmm"), "dlib_resnet", [("conv.w", wa, "f16"), ("conv.b", ba)])
        r = soup("-o", p("cb.fmm"), p("c.fmm"), p("b.fmm"), "--weights", "3,1")
        check(r.returncode == 0, "weights 3,1: %s" % r.stderr)
        meta, t = read_model(p("cb.fmm"))
        wa16 = wa.astype(np.float16).astype(np.float64)
        check(np.array_equal(t["conv.w"], (0.75 * wa16 + 0.25 * wb.astype(np.float64)).astype(np.float32)),
              "weights 3,1 with an f16 input: not the weighted mean")
        check(meta.get("soup.weights") == [0.75, 0.25], "weights normalised: %r" % meta.get("soup.weights"))

        # refusals: nothing written
        model(p("shape.fmm"), "dlib_resnet", [("conv.w", wa[:2]), ("conv.b", ba)])
        model(p("names.fmm"), "dlib_resnet", [("conv.w", wa), ("conv.bias", ba)])
        model(p("arch.fmm"), "facenet", [("conv.w", wa), ("conv.b", ba)])
        huge = np.full((4, 3, 3, 3), 3e38, dtype=np.float32)
        model(p("huge1.fmm"), "dlib_resnet", [("conv.w", huge), ("conv.b", ba)])
        model(p("huge2.fmm"), "dlib_resnet", [("conv.w", np.full_like(huge, np.inf)), ("conv.b", ba)])
        for args, what in (((p("a.fmm"), p("shape.fmm")), "a tensor of another shape"),
                           ((p("a.fmm"), p("names.fmm")), "another tensor list"),
                           ((p("a.fmm"), p("arch.fmm")), "another architecture"),
                           ((p("a.fmm"),), "one input"),
                           ((p("a.fmm"), p("b.fmm"), "--weights", "1"), "one weight for two"),
                           ((p("a.fmm"), p("b.fmm"), "--weights", "1,-1"), "a negative weight"),
                           ((p("a.fmm"), p("b.fmm"), "--weights", "0,0"), "weights all zero"),
                           ((p("huge1.fmm"), p("huge2.fmm")), "a mean that is not finite")):
            out = p("refused.fmm")
            r = soup("-o", out, *args)
            check(r.returncode != 0, "%s: accepted" % what)
            check(not os.path.exists(out), "%s: a file was written" % what)
            check("fmmsoup" in r.stderr or "error" in r.stderr, "%s: no message (%r)" % (what, r.stderr))
    print("test_model_soup: %d checks, %d failed" % (checks, failures), file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
