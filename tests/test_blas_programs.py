#!/usr/bin/python3
"""test_blas_programs.py - the programs that compute apply engine.blas_kernels.

    test_blas_programs.py --bin BUILD/bin --src SRC

tests/test_blas.c covers the choice itself; this checks that the programs make it, as
a user sees it, with the sample photos:
  - `facemill detect` logs one INFO line naming the kernel set and why: OpenBLAS's
    own with keep; another set by name (re-executed, self-checked) with the same
    faces found; OpenBLAS's own after a forced self-check failure; the user's
    OPENBLAS_CORETYPE untouched whatever the setting; a bad name is an error (exit 1);
  - the setting comes from a configuration file as well as from --set, and from a
    pipe (standard input, a descriptor): the re-executed program reads it whole again;
  - `facemill config` (nothing computed) and `facemill detect --help` log nothing;
  - `facemill label` starts facemill-worker, which re-executes with the kernel set
    named and labels the photos.
OPENBLAS_CORETYPE is set only in the environments of the programs run here.
Skips (77) without the sample photos (models/fetch).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fm_testlib import Checks, run, user_env  # noqa: E402

LINE = re.compile(r"INFO  BLAS kernels ([A-Za-z0-9_]+): (.*)")


def blas_lines(stderr):
    return [m.groups() for m in map(LINE.search, stderr.splitlines()) if m]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--src", required=True)
    a = ap.parse_args()
    facemill = os.path.join(a.bin, "facemill")
    samples = os.path.join(a.src, "models", "cache", "samples")
    if not os.path.isfile(os.path.join(samples, "sample2.jpg")):
        print("skip: no sample photos (run models/fetch)", file=sys.stderr)
        return 77
    photo = os.path.join(samples, "sample2.jpg")
    check = Checks("test_blas_programs")
    tmp = tempfile.mkdtemp(prefix="facemill-test-blas-")
    base = user_env(tmp)
    base.pop("OPENBLAS_CORETYPE", None)  # OpenBLAS's own choice, in these runs only
    try:
        def detect(setting, extra_env=None, args=()):
            env = dict(base)
            env.update(extra_env or {})
            cmd = [facemill, "detect"] + list(args)
            if setting is not None:
                cmd += ["--set", "engine.blas_kernels=" + setting]
            return run(cmd + [photo], env=env, timeout=600)

        def faces(p):
            try:
                return len(json.loads(p.stdout)["faces"])
            except (ValueError, KeyError):
                return -1

        p = detect("keep")
        lines = blas_lines(p.stderr)
        check(p.returncode == 0 and len(lines) == 1, "keep: one INFO line: %s" % p.stderr)
        own = lines[0][0] if lines else "?"
        check(lines and "keep" in lines[0][1], "keep: the reason says so: %s" % lines)
        n_faces = faces(p)
        check(n_faces == 2, "keep: sample2's two faces: %d" % n_faces)

        name = "Prescott" if own != "Prescott" else "Core2"
        p = detect(name)
        lines = blas_lines(p.stderr)
        check(p.returncode == 0 and lines and lines[0][0] == name and
              "self-check passed" in lines[0][1], "%s by name: %s" % (name, p.stderr))
        check(len(lines) == 1, "one line, from the re-executed process: %s" % lines)
        check(faces(p) == n_faces, "%s: the same faces: %d" % (name, faces(p)))

        for hook, why in (("1", "wrong results"), ("crash", "crashed")):
            p = detect(name, {"FACEMILL_BLAS_SELFTEST_FAIL": hook})
            lines = blas_lines(p.stderr)
            check(p.returncode == 0 and lines and lines[0][0] == own and why in lines[0][1],
                  "a failing self-check (%s) falls back to %s: %s" % (hook, own, p.stderr))
            check(faces(p) == n_faces, "after the fall-back: the same faces")

        for setting in ("auto", "keep", "SkylakeX"):
            p = detect(setting, {"OPENBLAS_CORETYPE": name})
            lines = blas_lines(p.stderr)
            check(p.returncode == 0 and lines and lines[0][0] == name and
                  "OPENBLAS_CORETYPE=%s" % name in lines[0][1],
                  "the user's OPENBLAS_CORETYPE with %s: %s" % (setting, p.stderr))

        p = detect("auto")
        lines = blas_lines(p.stderr)
        check(p.returncode == 0 and len(lines) == 1, "auto: one line: %s" % p.stderr)

        p = detect("Haswel")
        check(p.returncode == 1 and "engine.blas_kernels 'Haswel'" in p.stderr,
              "a bad name: exit 1 and why: %d %s" % (p.returncode, p.stderr))

        conf = os.path.join(tmp, "facemill.yaml")
        with open(conf, "w") as f:
            f.write("engine:\n  blas_kernels: %s\n" % name.lower())
        p = detect(None, args=["--config", conf])
        lines = blas_lines(p.stderr)
        check(p.returncode == 0 and lines and lines[0][0] == name,
              "the setting from a file: %s" % p.stderr)

        # the same from a pipe (standard input, and a descriptor as a shell's <(...)
        # passes it), with a setting that shows: the re-executed program reads it again
        text = "engine:\n  blas_kernels: %s\ndetect:\n  min_face: 400\n" % name
        with open(conf, "w") as f:
            f.write(text)
        p = detect(None, args=["--config", conf])
        big = faces(p)
        check(p.returncode == 0 and 0 <= big < n_faces,
              "min_face 400 from a file: fewer faces (%d of %d)" % (big, n_faces))
        env = dict(base)
        p = subprocess.run([facemill, "detect", "--config", "/dev/stdin", photo], env=env,
                           input=text, capture_output=True, text=True, timeout=600)
        lines = blas_lines(p.stderr)
        check(p.returncode == 0 and lines and lines[0][0] == name and faces(p) == big,
              "from standard input, re-executed: %s, %d faces: %s" % (
                  lines and lines[0][0], faces(p), p.stderr[-500:]))
        r, w = os.pipe()
        os.write(w, text.encode())
        os.close(w)
        p = subprocess.run([facemill, "detect", "--config", "/dev/fd/%d" % r, photo],
                           env=env, pass_fds=(r,), capture_output=True, text=True,
                           timeout=600)
        os.close(r)
        lines = blas_lines(p.stderr)
        check(p.returncode == 0 and lines and lines[0][0] == name and faces(p) == big,
              "from a pipe's descriptor, re-executed: %s, %d faces: %s" % (
                  lines and lines[0][0], faces(p), p.stderr[-500:]))

        p = run([facemill, "config"], env=base, timeout=60)
        check(p.returncode == 0 and not blas_lines(p.stderr) and
              "blas_kernels: \"auto\"" in p.stdout, "facemill config: no BLAS line, the key "
              "shown: %s" % p.stderr)
        p = run([facemill, "detect", "--help"], env=base, timeout=60)
        check(p.returncode == 0 and not blas_lines(p.stderr), "detect --help: no BLAS line")

        # facemill label -> facemill-worker, re-executed with the set named
        photos = os.path.join(tmp, "photos")
        os.mkdir(photos)
        for n in ("sample2.jpg", "sample3.jpg"):
            shutil.copy(os.path.join(samples, n), photos)
        db = os.path.join(tmp, "labels.db")
        p = run([facemill, "label", photos, "-o", db, "-j", "1", "--progress", "none",
                 "--set", "engine.blas_kernels=" + name], env=base, timeout=900)
        lines = blas_lines(p.stderr)
        check(p.returncode == 0 and "2 images: 2 committed" in p.stderr,
              "label: exit 0, both labelled: %s" % p.stderr[-1500:])
        check(any(k == name and "self-check passed" in why for k, why in lines),
              "label: the worker runs %s after its self-check: %s" % (name, lines))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
