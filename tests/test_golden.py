#!/usr/bin/env python3
"""test_golden.py - facemill's answers on the sample photos, kept in a reviewed file.

tests/golden/samples.json holds what `facemill predict` with the shipped defaults
answers for the six sample photos of models/fetch: per photo its size and faces (box,
score, landmarks, age, age_std, gender and its probabilities, ethnicity and its
probabilities), in the result schema (proto/RESULTS.md). The test runs predict again
and requires the same faces with the same fields and labels, and every number close:
boxes, landmarks and scores within relative 1e-4, ages and their spread within 0.02
years, probabilities within 0.001. Numbers are printed exactly (the shortest decimal
of each float32), so the tolerances are not for printing: they are for another CPU,
whose OpenBLAS kernels sum the backbone's products in another order. The file was
written with OpenBLAS's AVX2 kernels (Zen); its AVX-512 kernels (SkylakeX) give the
same boxes and landmarks within 2e-4 px but move ages by up to 0.005 years and
probabilities by up to 3.1e-4 (1e-3 relative for the smallest). Any change to the
model, the detector, the alignment or the heads moves them far more, and shows as a
diff of that file in review.

Regenerate it only on purpose, with the command below, and say why in the commit:

    /usr/bin/python3 tests/test_golden.py --bin build/bin --src . --regenerate

Exit 0 pass, 1 fail.
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fm_testlib import Checks, close, dir_args, flat, samples_dir  # noqa: E402


def predict(fm, samples):
    files = sorted(os.path.join(samples, f) for f in os.listdir(samples)
                   if f.lower().endswith(".jpg"))
    p = subprocess.run([fm, "predict"] + files, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit("test_golden: facemill predict exited %d: %s" % (p.returncode,
                                                                          p.stderr[-1500:]))
    out = {}
    for line in p.stdout.splitlines():
        o = json.loads(line)
        if o.get("schema") != 2:
            raise SystemExit("test_golden: not an image object of schema 2: %s" % line[:200])
        out[os.path.basename(o["source"])] = {
            "width": o["width"], "height": o["height"], "faces": o["faces"]}
    return out


def tolerance(key):
    """How close a number of the result must be to the file's (see the docstring)."""
    if key.startswith(("gender_probs.", "race_probs.")):
        return {"rel": 0, "ab": 1e-3}
    if key in ("age", "age_std"):
        return {"rel": 0, "ab": 0.02}
    return {"rel": 1e-4, "ab": 1e-7}


def main():
    a = dir_args("bin", "src", more=[(["--regenerate"], {"action": "store_true"})])
    src = a.src
    fm = os.path.join(a.bin, "facemill")
    samples = samples_dir(src, "test_golden")
    golden = os.path.join(src, "tests", "golden", "samples.json")
    if not samples:
        return 1
    got = predict(fm, samples)
    if a.regenerate:
        # one face a line: a change shows as the faces it changed
        with open(golden, "w") as f:
            f.write("{\n")
            for k, name in enumerate(sorted(got)):
                v = got[name]
                f.write(' "%s": {"width": %d, "height": %d, "faces": [\n' %
                        (name, v["width"], v["height"]))
                f.write(",\n".join("  " + json.dumps(face)
                                   for face in v["faces"]))
                f.write("\n ]}%s\n" % ("," if k + 1 < len(got) else ""))
            f.write("}\n")
        print("test_golden: wrote %s (%d photos, %d faces)" % (
            golden, len(got), sum(len(v["faces"]) for v in got.values())), file=sys.stderr)
        return 0
    want = json.load(open(golden))
    check = Checks("test_golden")

    check(sorted(got) == sorted(want), "photos %s, golden %s" % (sorted(got), sorted(want)))
    for name in sorted(want):
        g, w = got.get(name), want[name]
        if g is None:
            continue
        check(g["width"] == w["width"] and g["height"] == w["height"], name + ": size")
        check(len(g["faces"]) == len(w["faces"]),
              "%s: %d faces, golden %d" % (name, len(g["faces"]), len(w["faces"])))
        for i, (gf, wf) in enumerate(zip(g["faces"], w["faces"])):
            gf, wf = flat(gf), flat(wf)
            check(sorted(gf) == sorted(wf), "%s face %d: fields %s, golden %s" %
                  (name, i, sorted(gf), sorted(wf)))
            for key in sorted(wf):
                u, v = gf.get(key), wf[key]
                if isinstance(v, str) or v is None:  # a class, or null: withheld
                    check(u == v, "%s face %d: %s %r, golden %r" % (name, i, key, u, v))
                else:
                    check(isinstance(u, (int, float)) and close(u, v, **tolerance(key)),
                          "%s face %d: %s %s, golden %s" % (name, i, key, u, v))
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
