"""model_interop.py - the Python side of test_model_interop.

Why it exists: converters write model files in Python (models/tools/fmmodel.py) and
workers read them in C (worker/engine/model.c); both must agree byte for byte. This script
writes the reference model with fmmodel.py, or reads a file (written by the C writer)
and checks that it holds exactly the reference contents. test_model_interop.c builds
the same reference in C and compares.

    model_interop.py write PATH
    model_interop.py check PATH
    model_interop.py agree MANIFEST   (lines "FILE VERDICT", VERDICT ok|format|version:
                                       read_model must reach the same verdict as C)
Exit 0 on success, 1 on a mismatch, 77 when numpy is missing (test skipped).
"""

import math
import os
import struct
import sys

try:
    import numpy as np
except ImportError:
    print("numpy missing: skipped", file=sys.stderr)
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "models", "tools"))
import fmmodel  # noqa: E402


def bits_tensor(n, seed):
    """n float32 values from an LCG over raw bit patterns (NaNs and infinities
    included), the same sequence as bits_tensor() in test_model_interop.c."""
    out = np.empty(n, dtype=np.uint32)
    x = seed
    for i in range(n):
        x = (x * 1664525 + 1013904223) & 0xFFFFFFFF
        out[i] = x
    return out.view(np.float32)


HALF_SPECIAL = [0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x7BFF,
                0xFBFF, 0x7C00, 0xFC00, 0x7E00, 0x7D01, 0xFFFF]


def half_bits():
    """33 binary16 bit patterns: every kind first, then an LCG's (as in the C half)."""
    out = np.empty(33, dtype=np.uint16)
    x = 777
    for i in range(33):
        x = (x * 1664525 + 1013904223) & 0xFFFFFFFF
        out[i] = HALF_SPECIAL[i] if i < 12 else x >> 16
    return out


def thirds():
    """40 float32 values that each writer rounds to f16 with its own conversion."""
    return np.array([(i - 20) / 3.0 * 8.0 ** (i % 9 - 4) for i in range(40)],
                    dtype=np.float64).astype(np.float32)


def reference():
    """The reference model: (metadata dict, list of (name, float32 array))."""
    meta = {
        "general.architecture": "interop.test",
        "general.name": "Interop \u00c4\u00f6 \u6f22\u5b57 \U0001F600",
        "general.empty": "",
        "a.i64.min": -(1 << 63),
        "a.i64.max": (1 << 63) - 1,
        "a.i64.zero": 0,
        "a.f64.tenth": 0.1,
        "a.f64.negzero": -0.0,
        "a.f64.big": 1e308,
        "a.f64.denormal": 5e-324,
        "a.f64.inf": math.inf,
        "input.size": [150, 150],
        "input.mean": [127.5, 127.5, 127.5],
        "input.scale": [1 / 128.0, 1 / 128.0, 1 / 128.0],
        "labels.race": ["White", "Black", "Asian", "Indian", "Others", ""],
        "align.template": [38.2946, 51.6963, 73.5318, 51.5014, 56.0252,
                           71.7366, 41.5493, 92.3655, 70.7299, 92.2041],
    }
    ramp = (np.arange(120, dtype=np.float64) * 0.125 - 6.0).reshape(2, 3, 4, 5)
    tensors = [
        ("conv1.w", ramp.astype(np.float32)),
        ("conv1.b", np.array([1.5, -2.25, 3.0e38], dtype=np.float32)),
        ("bits", bits_tensor(35, 12345).reshape(7, 5)),
        ("half", half_bits().view(np.float16).reshape(3, 11), "f16"),
        ("one", np.array([42.0], dtype=np.float32)),
        ("fc.w", (np.arange(64 * 17, dtype=np.float64) / 17.0).astype(np.float32)
         .reshape(64, 17)),
        ("rounded", thirds(), "f16"),
    ]
    return meta, tensors


def check(path):
    meta, tensors = reference()
    got_meta, got_tensors = fmmodel.read_model(path)
    ok = True
    if list(got_meta) != list(meta):
        print("metadata keys/order differ: %s" % list(got_meta), file=sys.stderr)
        ok = False
    for k, v in meta.items():
        g = got_meta.get(k)
        want = list(v) if isinstance(v, (list, tuple)) else v
        same = type(g) is type(want) and (
            struct.pack("<%dd" % len(want), *want) == struct.pack("<%dd" % len(g), *g)
            if isinstance(want, list) and want and isinstance(want[0], float)
            else struct.pack("<d", want) == struct.pack("<d", g)
            if isinstance(want, float) else g == want)
        if not same:
            print("metadata %s: got %r, want %r" % (k, g, want), file=sys.stderr)
            ok = False
    if list(got_tensors) != [t[0] for t in tensors]:
        print("tensor names/order differ: %s" % list(got_tensors), file=sys.stderr)
        ok = False
    for t in tensors:
        name, a = t[0], t[1]
        if len(t) == 3:
            a = np.asarray(a)
            a = a if a.dtype == np.float16 else fmmodel.f32_to_f16(a).view(np.float16)
        g = got_tensors.get(name)
        if g is None or g.shape != a.shape or g.dtype != a.dtype or \
                g.tobytes() != a.tobytes():
            print("tensor %s differs" % name, file=sys.stderr)
            ok = False
    return ok


def agree(manifest):
    """Reads every file of the manifest with read_model and compares the outcome with
    the verdict the C reader (FM_MODEL_VERIFY_DATA) reached."""
    base = os.path.dirname(os.path.abspath(manifest))
    counts = {"ok": 0, "format": 0, "version": 0}
    bad = 0
    with open(manifest) as f:
        for line in f:
            name, want = line.split()
            try:
                fmmodel.read_model(os.path.join(base, name))
                got = "ok"
            except fmmodel.VersionError:
                got = "version"
            except fmmodel.FormatError:
                got = "format"
            if got != want:
                print("%s: Python says %s, C says %s" % (name, got, want), file=sys.stderr)
                bad += 1
            counts[got] += 1
    print("agree: %d files, Python verdicts %s, %d disagreements"
          % (sum(counts.values()), counts, bad), file=sys.stderr)
    return 0 if bad == 0 else 1


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "agree":
        return agree(sys.argv[2])
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    if sys.argv[1] == "write":
        meta, tensors = reference()
        fmmodel.write_model(sys.argv[2], meta, tensors)
        return 0
    try:
        return 0 if check(sys.argv[2]) else 1
    except fmmodel.FormatError as e:
        print("refused: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
