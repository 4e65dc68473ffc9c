#!/usr/bin/env python3
"""test_install.py - facemill installed and run as a user would, from anywhere.

  1. `cmake --install BUILD --prefix P` into a scratch directory: every program in
     P/bin, the fetcher, its converters and the committed models in P/share/facemill,
     the example configuration, the man pages, the systemd units (ExecStart in P/bin),
     the Python client with its generated protobuf module.
  2. From an unrelated directory with HOME an empty directory and no FACEMILL_*
     variables: before any fetch, `P/bin/facemill label` fails with one line naming
     every place searched and `facemill models fetch`; then `P/bin/facemill models
     fetch` (npm's cache, offline: no network needed once ops/test has fetched) and
     `P/bin/facemill label PHOTOS -o r.db` labels the sample photos; the export equals
     `facemill predict` of the build tree, face by face and field by field (the same
     schema, proto/RESULTS.md).
  3. `facemill config` names the installed files; `facemill models list` verifies them.
  4. The install moved elsewhere (a relocated prefix) still finds its models.
  5. As an unprivileged user (root only: setpriv) a read-only install fetches into
     $XDG_DATA_HOME/facemill/models and labels from there.
  6. BUILD/bin/facemill label run from an unrelated directory (the source tree's
     models).

Usage: test_install.py --build BUILD --src SRC
Exit 0 pass, 1 fail, 77 when part of it could not run (not root).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fm_testlib import (Checks, dir_args, face_diff, npm_cache, run,  # noqa: E402
                        samples_dir, user_env, user_workspace)

check = Checks("test_install")


def faces_of_export(text):
    """basename of source -> image object (export and predict print one schema)."""
    out = {}
    for line in text.splitlines():
        o = json.loads(line)
        out[os.path.basename(o["source"])] = o
    return out


def label_and_check(tag, facemill, photos, cwd, env, want, user=None):
    db = os.path.join(cwd, "r.db")
    p = run([facemill, "label", photos, "-o", db, "-j", "2", "--set", "log.level=warn"],
            env, cwd, user=user)
    if not check(p.returncode == 0, "%s: label exit %d: %s" % (tag, p.returncode,
                                                               p.stderr[-2000:])):
        return
    p = run([facemill, "export", db], env, cwd, user=user)
    check(p.returncode == 0, "%s: export exit %d: %s" % (tag, p.returncode, p.stderr))
    got = faces_of_export(p.stdout)
    check(sorted(got) == sorted(want), "%s: exported %s, want %s" % (tag, sorted(got),
                                                                     sorted(want)))
    nfaces = 0
    for name, w in want.items():
        g = got.get(name, {})
        gf, wf = g.get("faces", []), w.get("faces", [])
        check(len(gf) == len(wf), "%s: %s has %d faces, predict %d" % (tag, name, len(gf),
                                                                        len(wf)))
        for a, b in zip(gf, wf):
            nfaces += 1
            check(not face_diff(a, b, 1e-5), "%s: %s: face %s differs from predict's %s" %
                  (tag, name, a, b))
    check(nfaces >= 6, "%s: only %d faces labelled" % (tag, nfaces))
    os.unlink(db)


def main():
    a = dir_args("build", "src")
    build, src = a.build, a.src
    samples = samples_dir(src, "test_install")
    if not samples:
        return 1
    # npm's cache as models/fetch left it: `models fetch --offline` takes the tarballs
    # from it, so the test needs no network
    npm = npm_cache()

    tmp = tempfile.mkdtemp(prefix="facemill-install-")
    os.chmod(tmp, 0o755)
    try:
        prefix = os.path.join(tmp, "p")
        p = subprocess.run(["cmake", "--install", build, "--prefix", prefix],
                           capture_output=True, text=True)
        if not check(p.returncode == 0, "cmake --install: %s" % p.stderr):
            return 1
        fm = os.path.join(prefix, "bin", "facemill")
        share = os.path.join(prefix, "share", "facemill")

        # 1. what is installed
        for prog in ("facemill", "facemill-broker", "facemill-sink", "facemill-worker",
                     "facemill-bench-ops", "facemill-bench-detect", "facemill-bench-embed"):
            check(os.access(os.path.join(prefix, "bin", prog), os.X_OK), "bin/" + prog)
        for f in ("fetch", "tools/fmmodel.py", "tools/tflite2fmm.py", "tools/faceapi2fmm.py",
                  "tools/fmmcompact.py", "models/dlib_resnet_ft.f16.fmm",
                  "models/heads_dlib_ft.fmm", "models/heads_dlib.fmm",
                  "examples/submit.py", "examples/facemill_pb2.py"):
            check(os.path.isfile(os.path.join(share, f)), "share/facemill/" + f)
        check(os.access(os.path.join(share, "fetch"), os.X_OK), "fetch is executable")
        for f in ("doc/facemill/examples/facemill.yaml", "man/man1/facemill.1",
                  "man/man5/facemill.yaml.5", "man/man8/facemill-broker.8",
                  "man/man8/facemill-sink.8", "man/man8/facemill-worker.8"):
            check(os.path.isfile(os.path.join(prefix, "share", f)), "share/" + f)
        units = os.path.join(prefix, "lib", "systemd", "system")
        for u in ("facemill-broker", "facemill-sink", "facemill-worker"):
            path = os.path.join(units, u + ".service")
            if check(os.path.isfile(path), "unit " + path):
                text = open(path).read()
                check("ExecStart=%s/bin/%s" % (prefix, u) in text,
                      "%s: ExecStart in %s/bin" % (u, prefix))
        # the generated protobuf module imports beside the installed client
        p = subprocess.run(["/usr/bin/python3", "-c", "import facemill_pb2; "
                            "print(facemill_pb2.Envelope.DESCRIPTOR.full_name)"],
                           cwd=os.path.join(share, "examples"), capture_output=True, text=True)
        check(p.returncode == 0 and "Envelope" in p.stdout, "facemill_pb2 imports: " + p.stderr)

        # 2. a user in an unrelated directory
        home, work, photos = user_workspace(tmp, samples)
        env = user_env(home)

        p = run([fm, "label", photos, "-o", os.path.join(work, "none.db"), "-j", "1"], env, work)
        err_lines = [l for l in p.stderr.splitlines() if "not found" in l]
        check(p.returncode != 0, "label without models exits non-zero")
        check(err_lines and "facemill models fetch" in err_lines[0] and
              os.path.join(share, "models") in err_lines[0] and home in err_lines[0] and
              work in err_lines[0],
              "missing model: one line naming the places and the fetch command: %r" %
              p.stderr[-1500:])

        p = run([fm, "models", "fetch", "--offline"], user_env(home, {
            "npm_config_cache": npm}), work, timeout=600)
        check(p.returncode == 0, "models fetch: exit %d: %s %s" % (p.returncode, p.stdout,
                                                                   p.stderr))
        for f in ("mtcnn_pnet.fmm", "mtcnn_rnet.fmm", "mtcnn_onet.fmm", "dlib_resnet.fmm",
                  "dlib_resnet_ft.fmm", "samples/sample1.jpg"):
            check(os.path.isfile(os.path.join(share, "models", f)), "fetched " + f)
        check(not os.path.exists(os.path.join(home, ".local")),
              "a writable install is fetched into, not HOME")

        # what predict of the build tree finds, to compare with
        want = {}
        for line in subprocess.run([os.path.join(build, "bin", "facemill"), "predict"] +
                                   sorted(os.path.join(photos, f) for f in os.listdir(photos)),
                                   capture_output=True, text=True, cwd=src).stdout.splitlines():
            o = json.loads(line)
            want[os.path.basename(o["source"])] = o
        check(len(want) == 6, "predict gave %d images" % len(want))

        label_and_check("installed", fm, photos, work, env, want)

        # 3. config and models list name the installed files
        p = run([fm, "config"], env, work)
        models_dir = os.path.join(share, "models")
        check("embed.backbone: %s/dlib_resnet_ft.fmm" % models_dir in p.stdout and
              "heads.model: %s/heads_dlib_ft.fmm" % models_dir in p.stdout and
              "%s/mtcnn_pnet.fmm" % models_dir in p.stdout,
              "config shows the resolved files: " + p.stdout[-800:])
        p = run([fm, "models", "list"], env, work)
        check(p.returncode == 0 and "0 failed verification, 0 settings unresolved" in p.stdout
              and "%s/heads_dlib_ft.fmm  <- heads.model" % models_dir in p.stdout,
              "models list: exit %d: %s %s" % (p.returncode, p.stdout[-1500:], p.stderr[-1500:]))

        # 4. relocated
        moved = os.path.join(tmp, "elsewhere")
        os.rename(prefix, moved)
        p = run([os.path.join(moved, "bin", "facemill"), "predict",
                 os.path.join(photos, "sample1.jpg")], env, work)
        check(p.returncode == 0 and '"age"' in p.stdout,
              "relocated predict: %d %s" % (p.returncode, p.stderr[-800:]))
        p = run([os.path.join(moved, "bin", "facemill"), "config"], env, work)
        check("%s/share/facemill/models/heads_dlib_ft.fmm" % moved in p.stdout,
              "relocated config resolves inside the new place")
        os.rename(moved, prefix)

        # 5. an unprivileged user, a read-only install: fetch goes to XDG_DATA_HOME
        if os.geteuid() == 0 and shutil.which("setpriv"):
            ro = os.path.join(tmp, "ro")
            p = subprocess.run(["cmake", "--install", build, "--prefix", ro],
                               capture_output=True, text=True)
            check(p.returncode == 0, "second install")
            uid = 65534
            uhome = os.path.join(tmp, "uhome")
            os.makedirs(uhome)
            os.chown(uhome, uid, uid)
            uwork = os.path.join(tmp, "uwork")
            shutil.copytree(photos, os.path.join(uwork, "photos"))
            for d, _, files in os.walk(uwork):
                os.chown(d, uid, uid)
                for f in files:
                    os.chown(os.path.join(d, f), uid, uid)
            # npm writes its cache index as it reads; give the user a copy
            ucache = os.path.join(tmp, "ucache")
            shutil.copytree(npm, ucache, symlinks=True)
            for d, _, files in os.walk(ucache):
                os.chown(d, uid, uid)
                for f in files:
                    os.chown(os.path.join(d, f), uid, uid, follow_symlinks=False)
            uenv = user_env(uhome, {"npm_config_cache": ucache,
                                    "XDG_DATA_HOME": os.path.join(uhome, "data")})
            ufm = os.path.join(ro, "bin", "facemill")
            p = run([ufm, "models", "fetch", "--offline"], uenv, uwork, timeout=600, user=uid)
            xdg_models = os.path.join(uhome, "data", "facemill", "models")
            check(p.returncode == 0 and "not writable" in p.stderr,
                  "unprivileged fetch: exit %d: %s" % (p.returncode, p.stderr[-1500:]))
            check(os.path.isfile(os.path.join(xdg_models, "dlib_resnet_ft.fmm")) and
                  os.path.isfile(os.path.join(xdg_models, "mtcnn_pnet.fmm")),
                  "fetched into XDG_DATA_HOME")
            label_and_check("unprivileged", ufm, os.path.join(uwork, "photos"), uwork, uenv,
                            want, user=uid)
        else:
            check.skip("not root: the unprivileged-user case (setpriv)")

        # 6. the build tree's program from an unrelated directory
        label_and_check("build tree", os.path.join(build, "bin", "facemill"), photos, work,
                        env, want)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()  # 77: some checks could not run here


if __name__ == "__main__":
    sys.exit(main())
