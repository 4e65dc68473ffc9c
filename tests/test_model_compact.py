"""test_model_compact.py - compact (f16) model files: `facemill model compact | expand |
get`, their Python twin models/tools/fmmcompact.py, and the expansion step of
models/fetch.

Why it exists: trained weights are committed as NAME.f16.fmm and expanded on every
machine, by the C program when it is built and by Python before that (ops/test runs
models/fetch before the build). Workers then share the expanded file, so both
expanders must write the same bytes, and models/fetch must re-expand exactly when the
committed file changed. Checked here:
  - C and Python write byte-identical compact and expanded files, print the same
    figures, and write the same bytes on every run;
  - values: every half's float survives compact exactly; ties round to even; NaN
    payloads and infinities are kept; expand is exact; compact(expand(c)) == c;
  - a value beyond f16's range is refused (nothing written) unless --force;
  - metadata is copied verbatim (empty arrays included), expand.* is replaced, the
    lineage block of `info` shows long values in full;
  - models/fetch --expand-only: made, up to date, stale after a new commit of the
    compact file, a damaged expansion is redone, a name clash with a package output
    is refused; C and Python expansions identical;
  - the figures compact prints (value count, max abs and max rel error) are what the
    files hold, recomputed here from both files; the max relative error over f16's
    normal range is at most 2^-11 (half a unit in the last place: round to nearest;
    a conversion that truncates reaches 2^-10);
  - the real dlib ResNet (when models/fetch has run): C and Python agree on it, and
    its figures are checked the same way.
Run by ctest with /usr/bin/python3; exit 77 (skipped) without numpy or the build, and
when the dlib ResNet has not been fetched (the other checks run, then exit 77 unless
one failed).
"""

import os
import re
import shutil
import sys
import tempfile

try:
    import numpy as np
except ImportError:
    print("numpy missing: skipped", file=sys.stderr)
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fm_testlib import SKIP, Checks, bin_dir, run as run_captured, source_dir  # noqa: E402

SRC = source_dir()
FACEMILL = os.path.join(bin_dir(), "facemill")
PY = "/usr/bin/python3"
TOOL = os.path.join(SRC, "models", "tools", "fmmcompact.py")
FETCH = os.path.join(SRC, "models", "fetch")
sys.path.insert(0, os.path.join(SRC, "models", "tools"))
import fmmodel  # noqa: E402

check = Checks("test_model_compact")
# f16 keeps 11 significant bits: round to nearest is off by at most half a unit in
# the last place, 2^-11 of the value, over the normal range (|x| >= 2^-14).
MAX_REL_NORMAL = 2.0 ** -11


def run(args, env=None):
    """(exit code, stdout, stderr) of args, with env added to this environment."""
    p = run_captured(args, env=dict(os.environ, **(env or {})))
    return p.returncode, p.stdout, p.stderr


def c_cmd(*args):
    return run([FACEMILL, "model"] + list(args))


def py_cmd(*args):
    return run([PY, TOOL] + list(args))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def bits32(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def check_figures(label, src, dst, out):
    """The figures `compact` printed in out against the files src (f32) and dst (f16)."""
    m_vals = re.search(r"values\s+(\d+);", out)
    m_abs = re.search(r"max abs error\s+(\S+)", out)
    m_rel = re.search(r"max rel error\s+(\S+) over \|x\| >= 2\^-14", out)
    if not check(m_vals and m_abs and m_rel, "%s: figures printed: %s" % (label, out)):
        return
    _, t = fmmodel.read_model(src)
    _, ct = fmmodel.read_model(dst)
    values, max_abs, max_rel = 0, 0.0, 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        for name, a in t.items():
            if a.dtype != np.float32:
                continue
            x = a.astype(np.float64).ravel()
            h = fmmodel.f16_to_f32(ct[name].view(np.uint16)).astype(np.float64).ravel()
            values += x.size
            ok = np.isfinite(x) & np.isfinite(h)
            e = np.abs(h[ok] - x[ok])
            if e.size:
                max_abs = max(max_abs, float(e.max()))
            normal = np.abs(x[ok]) >= 2.0 ** -14
            if normal.any():
                max_rel = max(max_rel, float((e[normal] / np.abs(x[ok][normal])).max()))
    print("%s: max rel error over f16's normal range %.6e (bound 2^-11 = %.6e), max abs "
          "error %.6e" % (label, max_rel, MAX_REL_NORMAL, max_abs), file=sys.stderr)
    check(int(m_vals.group(1)) == values, "%s: %s values printed, %d in the file"
          % (label, m_vals.group(1), values))
    # printed with 4 significant digits
    check(abs(float(m_abs.group(1)) - max_abs) <= 5e-4 * max_abs,
          "%s: max abs error printed %s, recomputed %.6e" % (label, m_abs.group(1), max_abs))
    check(abs(float(m_rel.group(1)) - max_rel) <= 5e-4 * max_rel,
          "%s: max rel error printed %s, recomputed %.6e" % (label, m_rel.group(1), max_rel))
    check(max_rel <= MAX_REL_NORMAL, "%s: max relative error %.6e over the normal range "
          "exceeds 2^-11 = %.6e (not rounded to nearest)" % (label, max_rel, MAX_REL_NORMAL))


def sample_model(path, extra=None, big=None):
    """A model whose values exercise every conversion rule."""
    halfs = fmmodel.f16_to_f32(np.arange(65536, dtype=np.uint32).astype(np.uint16))
    finite = halfs[np.isfinite(halfs)]
    # ties between neighbouring positive halfs, and the floats right next to them
    lo = np.arange(0, 0x7BFF, 97, dtype=np.uint32).astype(np.uint16)
    mid = ((fmmodel.f16_to_f32(lo).astype(np.float64)
            + fmmodel.f16_to_f32(lo + 1).astype(np.float64)) / 2).astype(np.float32)
    near = np.concatenate([mid, np.nextafter(mid, np.float32(0)),
                           np.nextafter(mid, np.float32(np.inf)), -mid])
    nan_bits = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FA00000, 0xFF801FFF,
                         0x7F800000, 0xFF800000], dtype=np.uint32)
    rng = np.random.default_rng(7)
    meta = {
        "general.architecture": "test.compact",
        "general.name": "compact test \u00e9",
        "general.source": "trained:facemill",
        "general.source_integrity": "sha256:" + "ab" * 32,
        "general.base": "dlib_resnet npm:@vladmandic/face-api@1.7.15/x sha512-xyz",
        "train.command": "facemill train --fine-tune " + "--flag value " * 30,
        "train.date": "2025-01-31T17:04:11Z",
        "train.seed": 1,
        "a.f64": 0.1,
        "a.empty": fmmodel.RawValue(fmmodel.T_I64_ARRAY, b"\0\0\0\0"),
        "a.f64s": [0.1, -0.0, 1e308],
        "labels.race": ["White", "Black", ""],
    }
    if extra:
        meta.update(extra)
    tensors = [
        ("halfs", finite.reshape(-1, 64) if finite.size % 64 == 0 else finite),
        ("ties", near),
        ("nan", nan_bits.view(np.float32)),
        ("w", (rng.standard_normal((32, 3, 3, 3)) * 0.05).astype(np.float32)),
        ("tiny", (rng.standard_normal(257) * 1e-6).astype(np.float32)),
        ("already", np.array([1.0, 2.0, 3.0], dtype=np.float16), "f16"),
    ]
    if big is not None:
        tensors.append(("big", np.array(big, dtype=np.float32)))
    fmmodel.write_model(path, meta, tensors)


def test_commands(tmp):
    src = os.path.join(tmp, "m.fmm")
    sample_model(src)
    cc, pc = os.path.join(tmp, "c.f16.fmm"), os.path.join(tmp, "p.f16.fmm")
    rc, c_out, err = c_cmd("compact", src, cc)
    check(rc == 0, "facemill model compact: exit %d %s" % (rc, err))
    rc, p_out, err = py_cmd("compact", src, pc)
    check(rc == 0, "fmmcompact.py compact: exit %d %s" % (rc, err))
    check(read(cc) == read(pc), "C and Python compact files are byte-identical")
    check(c_out.split("\n", 1)[1] == p_out.split("\n", 1)[1],
          "C and Python report the same figures:\n%s\n%s" % (c_out, p_out))
    check(os.path.getsize(cc) < os.path.getsize(src) * 0.52, "compact is about half")
    print(c_out, end="", file=sys.stderr)
    check_figures("C compact", src, cc, c_out)
    check_figures("Python compact", src, pc, p_out)
    again = os.path.join(tmp, "again.f16.fmm")
    c_cmd("compact", src, again)
    check(read(again) == read(cc), "compact is deterministic")

    meta, t = fmmodel.read_model(src)
    cmeta, ct = fmmodel.read_model(cc)
    check(list(cmeta) == list(meta), "compact keeps every metadata entry in order")
    rmeta, _ = fmmodel.read_model(src, raw_meta=True)
    crmeta, _ = fmmodel.read_model(cc, raw_meta=True)
    check(rmeta == crmeta, "metadata bytes copied verbatim (the empty array too)")
    check(all(a.dtype == np.float16 for a in ct.values()), "every tensor is f16")
    exact = bits32(fmmodel.f16_to_f32(ct["halfs"])) == bits32(t["halfs"])
    check(exact.all(), "every finite half survives compact exactly")
    want = fmmodel.f32_to_f16(t["ties"])
    finite = np.isfinite(t["ties"])
    check((want[finite] == t["ties"][finite].astype(np.float16).view(np.uint16)).all(),
          "fmmodel's rounding equals numpy's on the ties")
    got_nan = ct["nan"].view(np.uint16).tolist()
    check(got_nan == [0x7E00, 0xFE00, 0x7C01, 0x7D00, 0xFC01, 0x7C00, 0xFC00],
          "NaN payloads and infinities: %s" % [hex(x) for x in got_nan])
    check(ct["already"].view(np.uint16).tolist() == [0x3C00, 0x4000, 0x4200],
          "an f16 tensor is copied as it is")
    check("0 overflowed to infinity, 7 inf/NaN kept" in c_out, "counts of kept non-finite")

    # expand: same bytes from both, exact, and compact(expand(c)) == c
    ce, pe = os.path.join(tmp, "c.fmm"), os.path.join(tmp, "p.fmm")
    rc, out, err = c_cmd("expand", cc, ce)
    check(rc == 0, "facemill model expand: exit %d %s" % (rc, err))
    rc, out2, err = py_cmd("expand", cc, pe)
    check(rc == 0, "fmmcompact.py expand: exit %d %s" % (rc, err))
    check(read(ce) == read(pe), "C and Python expanded files are byte-identical")
    check(out.replace(ce, "OUT") == out2.replace(pe, "OUT"), "expand reports the same line")
    emeta, et = fmmodel.read_model(ce)
    check(all(a.dtype == np.float32 for a in et.values()), "every tensor is f32")
    for name, a in ct.items():
        check((bits32(et[name]) == bits32(fmmodel.f16_to_f32(a))).all(),
              "tensor %s expanded exactly" % name)
    import hashlib
    sha = hashlib.sha256(read(cc)).hexdigest()
    check(emeta.get("expand.source") == "c.f16.fmm" and
          emeta.get("expand.source_sha256") == sha, "expand.* records the compact file")
    check(list(emeta)[:-2] == list(meta), "expand keeps the metadata, then adds expand.*")
    back = os.path.join(tmp, "back.f16.fmm")
    c_cmd("compact", ce, back)
    check(read(back) == read(cc), "compact(expand(c)) == c, byte for byte")
    ce2 = os.path.join(tmp, "c2.fmm")
    c_cmd("expand", ce, ce2)  # an expanded file expanded again: expand.* replaced
    m2, _ = fmmodel.read_model(ce2)
    check(list(m2).count("expand.source") == 1 and
          m2["expand.source"] == "c.fmm", "expand.* is replaced, not repeated")

    # get: same text from both, every type
    for key in ("general.name", "train.seed", "a.f64", "a.f64s", "labels.race", "a.empty",
                "expand.source_sha256"):
        r1, o1, _ = c_cmd("get", ce, key)
        r2, o2, _ = py_cmd("get", ce, key)
        check(r1 == 0 and r2 == 0 and o1 == o2, "get %s: %r vs %r" % (key, o1, o2))
    check(c_cmd("get", ce, "no.such")[0] == 1 and py_cmd("get", ce, "no.such")[0] == 1,
          "get of a missing key exits 1")
    check(c_cmd("get", os.path.join(tmp, "none.fmm"), "k")[0] == 1, "get of no file")

    # info: dtype column, compact note, lineage in full
    rc, out, _ = c_cmd("info", cc)
    check(rc == 0 and " f16 " in out and "a compact file: expand it before use" in out,
          "info shows f16 tensors")
    check("\nlineage\n" in out and meta["train.command"] in out and
          "general.base" in out, "info prints the lineage in full")
    rc, out, _ = c_cmd("--help")
    check(rc == 0 and "model compact" in out and "model expand" in out, "model --help")
    check(c_cmd("compact", src)[0] == 2 and c_cmd("expand", src)[0] == 2 and
          py_cmd("expand", src)[0] == 2, "usage errors exit 2")
    bad = os.path.join(tmp, "bad.fmm")
    with open(bad, "wb") as f:
        f.write(read(src)[:-1] + bytes([read(src)[-1] ^ 1]))
    check(c_cmd("compact", bad, os.path.join(tmp, "x.fmm"))[0] == 1 and
          py_cmd("compact", bad, os.path.join(tmp, "x.fmm"))[0] == 1 and
          not os.path.exists(os.path.join(tmp, "x.fmm")),
          "a file with a bad data CRC is not compacted")


def test_overflow(tmp):
    src = os.path.join(tmp, "o.fmm")
    sample_model(src, big=[65504.0, 65519.99, 65520.0, -1e6, 3.0e38])
    for name, cmd in (("C", c_cmd), ("Python", py_cmd)):
        dst = os.path.join(tmp, "o.%s.f16.fmm" % name)
        rc, out, err = cmd("compact", src, dst)
        check(rc == 1 and not os.path.exists(dst), "%s refuses overflow" % name)
        check("RuntimeWarning" not in err, "%s: no warnings" % name)
        check("3 values are beyond f16's range (largest |x| = 3.00000001e+38 in tensor "
              "'big'" in err, "%s names the overflow: %s" % (name, err))
        rc, out, err = cmd("compact", "--force", src, dst)
        check(rc == 0, "%s --force writes it" % name)
    a, b = (read(os.path.join(tmp, "o.%s.f16.fmm" % n)) for n in ("C", "Python"))
    check(a == b, "forced compact: C and Python identical")
    _, t = fmmodel.read_model(os.path.join(tmp, "o.C.f16.fmm"))
    check(t["big"].view(np.uint16).tolist() == [0x7BFF, 0x7BFF, 0x7C00, 0xFC00, 0x7C00],
          "forced overflow becomes infinities")


def fetch(tmp, cache, compact_dir, *args, expand_with="python"):
    env = {"FETCH_CACHE": cache, "FETCH_COMPACT_DIR": compact_dir,
           "FETCH_EXPAND_WITH": expand_with}
    return run([FETCH, "--expand-only"] + list(args), env=env)


def test_fetch(tmp):
    cdir, cache = os.path.join(tmp, "committed"), os.path.join(tmp, "cache")
    os.makedirs(cdir)
    src = os.path.join(tmp, "f.fmm")
    sample_model(src)
    c_cmd("compact", src, os.path.join(cdir, "tuned.f16.fmm"))
    out_file = os.path.join(cache, "tuned.fmm")

    rc, out, err = fetch(tmp, cache, cdir)
    check(rc == 0 and "made tuned.fmm (expanded from tuned.f16.fmm)" in out and
          "1 made, 0 up to date" in out, "fetch expands a missing model: %s %s" % (out, err))
    py_bytes = read(out_file)
    rc, out, _ = fetch(tmp, cache, cdir)
    check(rc == 0 and "0 made, 1 up to date" in out, "second run: up to date: %s" % out)
    rc, out, _ = fetch(tmp, cache, cdir, expand_with=FACEMILL)
    check(rc == 0 and "0 made, 1 up to date" in out, "C path reads the record too")
    rc, out, _ = fetch(tmp, cache, cdir, "--force", expand_with=FACEMILL)
    check(rc == 0 and "1 made" in out and read(out_file) == py_bytes,
          "C and Python expansion by fetch are identical")
    os.utime(os.path.join(cdir, "tuned.f16.fmm"))  # touching is not a change
    check("0 made, 1 up to date" in fetch(tmp, cache, cdir)[1], "mtime does not matter")

    # a new commit of the compact file: stale
    sample_model(src, extra={"train.date": "2025-02-01T00:00:00Z"})
    c_cmd("compact", src, os.path.join(cdir, "tuned.f16.fmm"))
    rc, out, _ = fetch(tmp, cache, cdir, expand_with=FACEMILL)
    check(rc == 0 and "1 made, 0 up to date" in out, "a changed compact file is re-expanded")
    m, _ = fmmodel.read_model(out_file)
    check(m["train.date"] == "2025-02-01T00:00:00Z", "the new weights are in the cache")

    # a damaged or foreign file in the cache is replaced
    with open(out_file, "r+b") as f:
        f.truncate(1000)
    check("1 made" in fetch(tmp, cache, cdir)[1], "a truncated expansion is redone")
    shutil.copy(src, out_file)  # no expand.* at all
    check("1 made" in fetch(tmp, cache, cdir, expand_with=FACEMILL)[1],
          "a file without expand.source_sha256 is replaced")
    check(fmmodel.read_model(out_file)[0]["expand.source"] == "tuned.f16.fmm", "replaced")

    # two compact models; a name that a package output already uses is refused
    shutil.copy(os.path.join(cdir, "tuned.f16.fmm"), os.path.join(cdir, "other.f16.fmm"))
    rc, out, _ = fetch(tmp, cache, cdir)
    check(rc == 0 and "1 made, 1 up to date" in out, "two compact models: %s" % out)
    shutil.copy(os.path.join(cdir, "tuned.f16.fmm"), os.path.join(cdir, "dlib_resnet.f16.fmm"))
    rc, _, err = fetch(tmp, cache, cdir)
    check(rc == 1 and "would expand onto dlib_resnet.fmm" in err, "name clash refused")
    os.unlink(os.path.join(cdir, "dlib_resnet.f16.fmm"))
    rc, out, _ = fetch(tmp, cache, os.path.join(tmp, "empty-dir-none"))
    check(rc == 0 and "0 made, 0 up to date" in out, "no compact models: nothing to do")
    rc, _, err = fetch(tmp, cache, cdir, expand_with="/nonexistent/facemill")
    check(rc == 1 and "FETCH_EXPAND_WITH" in err, "a bad FETCH_EXPAND_WITH is an error")


def test_dlib(tmp):
    dlib = os.path.join(SRC, "models", "cache", "dlib_resnet.fmm")
    if not os.path.exists(dlib):
        check.skip("the real dlib ResNet (run models/fetch)")
        return
    cc, pc = os.path.join(tmp, "d.c.f16.fmm"), os.path.join(tmp, "d.p.f16.fmm")
    rc, out, _ = c_cmd("compact", dlib, cc)
    check(rc == 0, "compact dlib_resnet.fmm")
    rc2, out2, _ = py_cmd("compact", dlib, pc)
    check(rc2 == 0 and read(cc) == read(pc), "dlib: C and Python compact identical")
    check(out.split("\n", 1)[1] == out2.split("\n", 1)[1], "dlib: same figures")
    print(out, end="", file=sys.stderr)
    check_figures("dlib C compact", dlib, cc, out)
    check_figures("dlib Python compact", dlib, pc, out2)
    ce, pe = os.path.join(tmp, "d.c.fmm"), os.path.join(tmp, "d.p.fmm")
    c_cmd("expand", cc, ce)
    py_cmd("expand", cc, pe)
    check(read(ce) == read(pe), "dlib: C and Python expand identical")
    print("dlib: %d bytes f32 -> %d bytes f16 -> %d bytes expanded"
          % (os.path.getsize(dlib), os.path.getsize(cc), os.path.getsize(ce)), file=sys.stderr)


def main():
    if not os.access(FACEMILL, os.X_OK):
        print("no facemill program in FACEMILL_BIN_DIR: skipped", file=sys.stderr)
        return SKIP
    tmp = tempfile.mkdtemp(prefix="fm_test_compact.")
    try:
        test_commands(tmp)
        test_overflow(tmp)
        test_fetch(tmp)
        test_dlib(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
