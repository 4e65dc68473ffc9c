"""fmmcompact - compact facemill model files to f16 and expand them back to f32.

Trained weights are committed under models/ as NAME.f16.fmm (every tensor IEEE
binary16: half the size) and expanded once per machine into the f32 file that workers
map (models/fetch does it). This is the Python twin of `facemill model compact |
expand | get`: same rules, same output, and byte for byte the same files, so a
machine that has not built facemill yet (models/fetch runs before the build in
ops/test) expands a committed file to exactly what the C program would write.

    fmmcompact.py compact [--force] IN.fmm OUT.fmm
        every f32 tensor to f16 (round to nearest even); prints the error introduced;
        refuses (exit 1, nothing written) when a finite value is beyond f16's range
        (|x| >= 65520) unless --force, which writes those as infinities
    fmmcompact.py expand IN.fmm OUT.fmm
        every f16 tensor to f32 (exact); metadata copied, plus expand.source (IN's
        file name) and expand.source_sha256 (IN's SHA-256, hex)
    fmmcompact.py get FILE KEY
        one metadata value (arrays one element per line); exit 1 when absent

expand.* keys of the input are dropped by both commands: they describe how one f32
file was made from one compact file. Output files are written atomically
(fmmodel.write_model). Exit status 0 success, 1 error, 2 bad usage. Needs numpy
(run with /usr/bin/python3).
"""

import hashlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fmmodel import (FormatError, RawValue, f16_to_f32, f32_to_f16,  # noqa: E402
                     read_model, write_model)

USAGE = """usage: fmmcompact.py compact [--force] IN.fmm OUT.fmm
       fmmcompact.py expand IN.fmm OUT.fmm
       fmmcompact.py get FILE KEY"""

NORMAL_MIN = 2.0 ** -14


class Stats:
    """What compact did to the values: the same figures, in the same order of
    evaluation, as compact_stats in worker/cli/cmd_model.c."""

    def __init__(self):
        self.values = 0
        self.overflow = 0
        self.overflow_max = 0.0
        self.overflow_tensor = None
        self.nonfinite = 0
        self.below_normal = 0
        self.to_zero = 0
        self.max_abs = 0.0
        self.max_abs_tensor = None
        self.max_rel = 0.0
        self.max_rel_normal = 0.0
        self.worst_rms = 0.0
        self.worst_rms_tensor = None

    def add(self, name, x, h):
        # Widening a signalling NaN raises numpy's "invalid" warning; the value stays
        # a NaN and is counted as one, so there is nothing to warn about.
        with np.errstate(invalid="ignore", over="ignore"):
            self._add(name, x, h)

    def _add(self, name, x, h):
        x = x.astype(np.float64).ravel()
        hv = f16_to_f32(h).astype(np.float64).ravel()
        self.values += x.size
        fin = np.isfinite(x)
        self.nonfinite += int((~fin).sum())
        over = fin & ~np.isfinite(hv)
        n_over = int(over.sum())
        if n_over:
            m = float(np.abs(x[over]).max())
            if m > self.overflow_max or self.overflow_tensor is None:
                self.overflow_max, self.overflow_tensor = m, name
            self.overflow += n_over
        ok = fin & ~over
        xv, hv = x[ok], hv[ok]
        e = np.abs(hv - xv)
        if e.size:
            m = float(e.max())
            if m > self.max_abs or self.max_abs_tensor is None:
                self.max_abs, self.max_abs_tensor = m, name
        nz = xv != 0
        if nz.any():
            r = e[nz] / np.abs(xv[nz])
            self.max_rel = max(self.max_rel, float(r.max()))
            normal = np.abs(xv[nz]) >= NORMAL_MIN
            if normal.any():
                self.max_rel_normal = max(self.max_rel_normal, float(r[normal].max()))
            self.below_normal += int((~normal).sum())
            self.to_zero += int((hv[nz] == 0).sum())
        # cumsum adds in order, as the C loop does, so the figure matches to the bit
        sse = float(np.cumsum(e * e)[-1]) if e.size else 0.0
        ssx = float(np.cumsum(xv * xv)[-1]) if xv.size else 0.0
        rms = float(np.sqrt(sse / ssx)) if ssx > 0 else 0.0
        if rms > self.worst_rms or self.worst_rms_tensor is None:
            self.worst_rms, self.worst_rms_tensor = rms, name


def _meta_without_expand(meta):
    return {k: v for k, v in meta.items() if not k.startswith("expand.")}


def compact(src, dst, force=False):
    meta, tensors = read_model(src, verify_data=True, raw_meta=True)
    stats = Stats()
    out = []
    n_f32 = 0
    for name, a in tensors.items():
        if a.dtype == np.float16:
            out.append((name, a, "f16"))
            continue
        h = f32_to_f16(a)
        stats.add(name, a, h)
        out.append((name, h.view(np.float16), "f16"))
        n_f32 += 1
    if stats.overflow and not force:
        print("fmmcompact.py compact: %s: %d values are beyond f16's range (largest |x| = "
              "%.9g in tensor '%s'; f16 holds at most 65504) and would become infinities; "
              "nothing written (--force writes them as infinities)"
              % (src, stats.overflow, stats.overflow_max, stats.overflow_tensor),
              file=sys.stderr)
        return 1
    write_model(dst, _meta_without_expand(meta), out)
    s = stats
    print("%s -> %s: %d tensors, %d converted to f16, %d -> %d bytes"
          % (src, dst, len(tensors), n_f32, os.path.getsize(src), os.path.getsize(dst)))
    print("  values           %d; %d overflowed to infinity, %d inf/NaN kept as they were"
          % (s.values, s.overflow, s.nonfinite))
    print("  max abs error    %.3e (tensor '%s')" % (s.max_abs, s.max_abs_tensor or "-"))
    print("  max rel error    %.3e over |x| >= 2^-14 (f16's normal range); %.3e over all "
          "nonzero values" % (s.max_rel_normal, s.max_rel))
    print("  below 2^-14      %d nonzero values (fewer significant bits), %d of them "
          "became 0" % (s.below_normal, s.to_zero))
    print("  worst tensor     relative RMS error %.3e (tensor '%s')"
          % (s.worst_rms, s.worst_rms_tensor or "-"))
    return 0


def expand(src, dst):
    with open(src, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    meta, tensors = read_model(src, verify_data=True, raw_meta=True)
    meta = _meta_without_expand(meta)
    meta["expand.source"] = os.path.basename(src)
    meta["expand.source_sha256"] = digest
    out = []
    n_f16 = 0
    for name, a in tensors.items():
        if a.dtype == np.float16:
            a = f16_to_f32(a)
            n_f16 += 1
        out.append((name, a))
    write_model(dst, meta, out)
    print("%s -> %s: %d tensors, %d expanded from f16; expand.source_sha256 %s"
          % (src, dst, len(tensors), n_f16, digest))
    return 0


def get(path, key):
    meta, _ = read_model(path, verify_data=False)
    if key not in meta:
        print("fmmcompact.py get: %s: no metadata '%s'" % (path, key), file=sys.stderr)
        return 1
    v = meta[key]
    values = v if isinstance(v, list) else [v]
    out = sys.stdout.buffer
    for x in values:
        if isinstance(x, str):
            out.write(x.encode("utf-8") + b"\n")
        elif isinstance(x, int):
            out.write(b"%d\n" % x)
        else:
            out.write(("%.17g\n" % x).encode("ascii"))
    out.flush()
    return 0


def main(argv):
    args = argv[1:]
    try:
        if len(args) >= 1 and args[0] == "compact":
            force = len(args) > 1 and args[1] == "--force"
            rest = args[2:] if force else args[1:]
            if len(rest) == 2:
                return compact(rest[0], rest[1], force)
        elif len(args) == 3 and args[0] == "expand":
            return expand(args[1], args[2])
        elif len(args) == 3 and args[0] == "get":
            return get(args[1], args[2])
        elif args in (["-h"], ["--help"]):
            print(USAGE)
            return 0
    except (FormatError, OSError, ValueError) as e:
        print("fmmcompact.py %s: %s" % (args[0], e), file=sys.stderr)
        return 1
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
