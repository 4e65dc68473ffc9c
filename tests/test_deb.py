#!/usr/bin/env python3
"""test_deb.py - the Debian package ops/package builds, checked and run as installed.

  1. `ops/package BUILD OUT` into a scratch directory (twice: the second run gives the
     same package, and neither leaves its staging directory behind).
  2. `dpkg-deb -f`: Package, Version (the CMake project version), Architecture
     (dpkg's), Depends computed from the programs (libzmq5, libprotobuf-c1, OpenBLAS,
     libturbojpeg0, libspng0, libwebp7, libheif1, libtiff6, libyaml-0-2, libsqlite3-0,
     libarchive13; libsystemd0 when they
     link libsystemd) plus python3, python3-numpy and adduser; Recommends npm.
  3. `dpkg-deb -c`: the programs, the fetcher, the committed models, the man pages,
     the units in /lib/systemd/system (one copy), /etc/facemill/facemill.yaml; all
     owned by root.
  4. `dpkg-deb -e`: conffiles names /etc/facemill/facemill.yaml; postinst creates the
     facemill user and never starts a service; `sh -n` on every maintainer script.
  5. `dpkg -x` into a scratch root: the units start /usr/bin/facemill-*, the
     configuration is config/facemill.yaml; then from an unrelated directory with an
     empty HOME and a minimal environment, ROOT/usr/bin/facemill models fetch
     --offline (npm's cache: ops/test runs models/fetch first), label the sample
     photos, export: 6 images, each with faces and ages; `facemill config` resolves
     heads.model inside ROOT/usr/share/facemill/models.

Usage: test_deb.py --build BUILD --src SRC
Exit 0 pass, 1 fail, 77 when dpkg-deb is missing (not a Debian system).
"""
import json
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fm_testlib import (SKIP, Checks, npm_cache as find_npm_cache, run,  # noqa: E402
                        dir_args, samples_dir, user_env, user_workspace)

check = Checks("test_deb")


def depends_names(field):
    """Package names in a Depends field, alternatives included, versions dropped."""
    names = set()
    for clause in field.split(","):
        for alt in clause.split("|"):
            alt = alt.strip()
            if alt:
                names.add(re.split(r"[\s(:]", alt, maxsplit=1)[0])
    return names


def cmake_cache(build, key):
    with open(os.path.join(build, "CMakeCache.txt")) as f:
        for line in f:
            m = re.match(r"%s:[A-Z]+=(.*)$" % re.escape(key), line.rstrip("\n"))
            if m:
                return m.group(1)
    return None


def package(src, build, out, tmpdir):
    """Run ops/package; the path it prints, or None."""
    env = dict(os.environ, TMPDIR=tmpdir)
    p = run([os.path.join(src, "ops", "package"), build, out], env=env, cwd=src, timeout=600)
    if not check(p.returncode == 0, "ops/package exit %d: %s" % (p.returncode,
                                                                 p.stderr[-3000:])):
        return None
    lines = p.stdout.strip().splitlines()
    deb = lines[-1] if lines else ""
    check(os.path.isfile(deb), "ops/package printed the package's path: %r" % p.stdout)
    check(not os.listdir(tmpdir), "ops/package left %s in its TMPDIR" % os.listdir(tmpdir))
    return deb if os.path.isfile(deb) else None


def contents(deb):
    """{path without ./: (mode string, owner/group)} of `dpkg-deb -c`."""
    p = run(["dpkg-deb", "-c", deb])
    check(p.returncode == 0, "dpkg-deb -c: " + p.stderr)
    out = {}
    for line in p.stdout.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        name = parts[5].split(" -> ")[0]
        if name.startswith("./"):
            name = name[2:]
        out[name.rstrip("/")] = (parts[0], parts[1])
    return out


def main():
    a = dir_args("build", "src")
    build, src = a.build, a.src
    if not shutil.which("dpkg-deb") or not shutil.which("dpkg"):
        print("test_deb: dpkg-deb is missing: not a Debian system, nothing to test",
              file=sys.stderr)
        return SKIP
    samples = samples_dir(src, "test_deb")
    if not samples:
        return 1
    # npm's cache as models/fetch left it (asked before HOME changes): `models fetch
    # --offline` takes the tarballs from it, so the test needs no network
    npm_cache = find_npm_cache()
    check(npm_cache, "npm config get cache: npm is needed to fetch the models")

    tmp = os.path.realpath(tempfile.mkdtemp(prefix="facemill-deb-"))
    os.chmod(tmp, 0o755)
    try:
        # 1. build it, twice
        out = os.path.join(tmp, "out")
        ptmp = os.path.join(tmp, "ptmp")
        os.makedirs(ptmp)
        deb = package(src, build, out, ptmp)
        if deb is None:
            return 1
        version = cmake_cache(build, "CMAKE_PROJECT_VERSION")
        arch = run(["dpkg", "--print-architecture"]).stdout.strip()
        check(os.path.basename(deb) == "facemill_%s_%s.deb" % (version, arch),
              "package named facemill_VERSION_ARCH.deb: %s" % deb)
        first = (run(["dpkg-deb", "-f", deb]).stdout, sorted(contents(deb)))
        deb2 = package(src, build, out, ptmp)
        check(deb2 == deb and sorted(os.listdir(out)) == [os.path.basename(deb)],
              "a second run replaces the package: %s" % os.listdir(out))
        if deb2:
            check((run(["dpkg-deb", "-f", deb2]).stdout, sorted(contents(deb2))) == first,
                  "a second run gives the same control and contents")

        # 2. control fields
        def field(name):
            p = run(["dpkg-deb", "-f", deb, name])
            return p.stdout.strip() if p.returncode == 0 else ""

        check(field("Package") == "facemill", "Package: %r" % field("Package"))
        check(field("Version") == version, "Version %r, the project's %r" %
              (field("Version"), version))
        check(field("Architecture") == arch, "Architecture %r, dpkg's %r" %
              (field("Architecture"), arch))
        for f in ("Maintainer", "Section", "Priority", "Description"):
            check(field(f), "control has " + f)
        check(field("Installed-Size").isdigit() and int(field("Installed-Size")) > 1000,
              "Installed-Size: %r" % field("Installed-Size"))
        depends = field("Depends")
        names = depends_names(depends)
        for want in ("libzmq5", "libprotobuf-c1", "libturbojpeg0", "libspng0", "libwebp7",
                     "libheif1", "libtiff6", "libyaml-0-2", "libsqlite3-0", "libarchive13", "libc6",
                     "python3", "python3-numpy", "adduser"):
            check(want in names, "Depends names %s: %s" % (want, depends))
        check(any(n.startswith("libopenblas0") for n in names),
              "Depends names an OpenBLAS package: " + depends)
        check(len(names) == len([c for c in depends.split(",") if c.strip()]),
              "Depends names each package once: " + depends)
        check("npm" in depends_names(field("Recommends")),
              "Recommends npm: %r" % field("Recommends"))

        # 3. contents
        files = contents(deb)
        for f in ("usr/bin/facemill", "usr/bin/facemill-broker", "usr/bin/facemill-sink",
                  "usr/bin/facemill-worker", "usr/share/facemill/fetch",
                  "usr/share/facemill/models/heads_dlib_ft.fmm",
                  "usr/share/facemill/models/dlib_resnet_ft.f16.fmm",
                  "usr/share/facemill/tools/fmmodel.py",
                  "usr/share/man/man1/facemill.1.gz",
                  "usr/share/man/man5/facemill.yaml.5.gz",
                  "usr/share/man/man8/facemill-worker.8.gz",
                  "usr/share/doc/facemill/copyright",
                  "usr/share/doc/facemill/changelog.Debian.gz",
                  "usr/share/doc/facemill/examples/facemill.yaml",
                  "lib/systemd/system/facemill-broker.service",
                  "lib/systemd/system/facemill-sink.service",
                  "lib/systemd/system/facemill-worker.service",
                  "etc/facemill/facemill.yaml"):
            check(f in files, "package holds " + f)
        for f in ("usr/bin/facemill", "usr/bin/facemill-worker", "usr/share/facemill/fetch"):
            check(files.get(f, ("",))[0].startswith("-rwxr-xr-x"), f + " is executable")
        units = [f for f in files if f.endswith(".service")]
        check(all(f.startswith("lib/systemd/system/") for f in units),
              "one copy of the units, in /lib/systemd/system: %s" % units)
        check(all(owner == "root/root" for _, owner in files.values()),
              "every file owned by root/root")

        # 4. maintainer scripts
        ctl = os.path.join(tmp, "control")
        p = run(["dpkg-deb", "-e", deb, ctl])
        check(p.returncode == 0, "dpkg-deb -e: " + p.stderr)

        def ctl_text(name):
            path = os.path.join(ctl, name)
            return open(path).read() if os.path.isfile(path) else ""

        check(ctl_text("conffiles").split() == ["/etc/facemill/facemill.yaml"],
              "conffiles: %r" % ctl_text("conffiles"))
        postinst = ctl_text("postinst")
        check("adduser" in postinst and "facemill" in postinst and
              "/var/lib/facemill" in postinst, "postinst creates the facemill user")
        check("daemon-reload" in postinst and "/run/systemd/system" in postinst,
              "postinst reloads systemd only when it runs")
        postinst_code = "\n".join(l for l in postinst.splitlines()
                                  if not l.lstrip().startswith("#"))
        check(not re.search(r"systemctl\s+(start|enable|restart|try-restart|reload)|"
                            r"deb-systemd-invoke|invoke-rc\.d", postinst_code),
              "postinst starts no service")
        check("deb-systemd-invoke stop facemill-worker.service" in ctl_text("prerm"),
              "prerm stops the units through deb-systemd-invoke")
        scripts = [s for s in ("preinst", "postinst", "prerm", "postrm", "config")
                   if os.path.isfile(os.path.join(ctl, s))]
        check(set(scripts) >= {"postinst", "prerm", "postrm"},
              "maintainer scripts postinst, prerm, postrm: %s" % scripts)
        for s in scripts:
            path = os.path.join(ctl, s)
            check(os.access(path, os.X_OK), s + " is executable")
            check(ctl_text(s).startswith("#!/bin/sh"), s + " is a POSIX sh script")
            p = run(["sh", "-n", path])
            check(p.returncode == 0, "sh -n %s: %s" % (s, p.stderr))

        # 5. unpacked, and run as a user would
        root = os.path.join(tmp, "root")
        p = run(["dpkg", "-x", deb, root])
        if not check(p.returncode == 0, "dpkg -x: " + p.stderr):
            return 1
        for u in ("facemill-broker", "facemill-sink", "facemill-worker"):
            path = os.path.join(root, "lib", "systemd", "system", u + ".service")
            text = open(path).read() if os.path.isfile(path) else ""
            check(re.search(r"^ExecStart=/usr/bin/%s(\s|$)" % u, text, re.M),
                  "%s: ExecStart=/usr/bin/%s" % (u, u))
            check("@" not in "".join(l for l in text.splitlines() if not l.startswith("#")),
                  u + ": no placeholder left")
            # the paths are the configuration's: a --set here would hide its keys and
            # send `facemill-broker --recover --config ...` to another journal
            check(re.search(r"^ExecStart=\S+$", text, re.M) and
                  re.search(r"^StateDirectory=facemill$", text, re.M),
                  u + ": ExecStart sets nothing; StateDirectory=facemill (the working "
                  "directory exists on a machine of workers alone)")
        with open(os.path.join(src, "config", "facemill.yaml"), "rb") as f:
            want_conf = f.read()
        want_conf = want_conf.replace(
            b'\n  journal: "facemill-journal.db"\n',
            b'\n  journal: "/var/lib/facemill/journal.db"\n').replace(
            b'\n  db: "facemill-results.db"\n', b'\n  db: "/var/lib/facemill/results.db"\n')
        conf = os.path.join(root, "etc", "facemill", "facemill.yaml")
        check(os.path.isfile(conf) and open(conf, "rb").read() == want_conf,
              "/etc/facemill/facemill.yaml is config/facemill.yaml with the journal and "
              "the results database in /var/lib/facemill")
        p = run([os.path.join(root, "usr", "bin", "facemill"), "config", "--config", conf])
        check(p.returncode == 0 and
              'journal: "/var/lib/facemill/journal.db"' in p.stdout and
              'db: "/var/lib/facemill/results.db"' in p.stdout,
              "facemill config reads them back: %s" % p.stderr[-300:])
        # the programs link libsystemd: the package must depend on it
        needed = run(["readelf", "-d"] + [os.path.join(root, "usr", "bin", p) for p in
                                          ("facemill", "facemill-broker", "facemill-sink",
                                           "facemill-worker")]).stdout
        if "libsystemd.so" in needed:
            check("libsystemd0" in names, "the programs link libsystemd: Depends names "
                  "libsystemd0: " + depends)

        home, work, photos = user_workspace(tmp, samples)
        env = user_env(home)
        fm = os.path.join(root, "usr", "bin", "facemill")
        models = os.path.join(root, "usr", "share", "facemill", "models")

        p = run([fm, "models", "fetch", "--offline"],
                user_env(home, {"npm_config_cache": npm_cache}), work, timeout=600)
        check(p.returncode == 0, "models fetch: exit %d: %s %s" % (p.returncode,
                                                                   p.stdout[-1500:],
                                                                   p.stderr[-1500:]))
        for f in ("mtcnn_pnet.fmm", "mtcnn_rnet.fmm", "mtcnn_onet.fmm", "dlib_resnet_ft.fmm"):
            check(os.path.isfile(os.path.join(models, f)), "fetched " + f + " into the root")
        check(not os.path.exists(os.path.join(home, ".local")),
              "the unpacked package is fetched into, not HOME")

        db = os.path.join(work, "r.db")
        p = run([fm, "label", photos, "-o", db, "-j", "2", "--set", "log.level=warn"],
                env, work, timeout=600)
        check(p.returncode == 0, "label: exit %d: %s" % (p.returncode, p.stderr[-2000:]))
        p = run([fm, "export", db], env, work)
        check(p.returncode == 0, "export: exit %d: %s" % (p.returncode, p.stderr[-1000:]))
        images = {}
        for line in p.stdout.splitlines():
            try:
                o = json.loads(line)
            except ValueError:
                check(False, "export line is not JSON: %r" % line[:200])
                continue
            images[os.path.basename(o.get("source") or "")] = o
        want = sorted(os.listdir(photos))
        check(sorted(images) == want and len(want) == 6,
              "exported %s, want the 6 samples %s" % (sorted(images), want))
        for name, o in sorted(images.items()):
            faces = o.get("faces") or []
            check(o.get("schema") == 2 and o.get("error", 0) is None,
                  "%s: a labelled image of the result schema 2: %s" % (name, o))
            check(faces, "%s: no faces" % name)
            check(all(isinstance(f.get("age"), (int, float)) and
                      isinstance((f.get("box") or {}).get("x1"), (int, float)) and
                      isinstance((f.get("gender_probs") or {}).get("female"), (int, float))
                      for f in faces),
                  "%s: every face has a box, an age and gender probabilities: %s" %
                  (name, faces))

        p = run([fm, "config"], env, work)
        check(p.returncode == 0 and
              re.search(r"\bheads\.model: %s$" %
                        re.escape(os.path.join(models, "heads_dlib_ft.fmm")), p.stdout, re.M),
              "config resolves heads.model in ROOT/usr/share/facemill/models: %s" %
              p.stdout[-800:])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
