"""fm_testlib.py - what the Python tests share (tests/lib; fm_test.h is the C tests'
counterpart): checks that count and keep going (Checks) or stop the test at the first
failure (require, Failure), skips (exit 77), waiting for a condition with a deadline,
running a program, a user's environment, where the tree, the build's programs and the
sample photos are, processes seen through /proc, and result objects compared number
by number.

A test in tests/ imports it with
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
    from fm_testlib import Checks, run  # noqa: E402
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

SKIP = 77  # the exit code of a test that could not run here (ctest SKIP_RETURN_CODE)

# What the sanitizers print when they find something (in a program's output).
SANITIZER_MARKS = (b"AddressSanitizer", b"LeakSanitizer", b"runtime error:")


# ---- checks ------------------------------------------------------------------------

class Checks:
    """check(cond, what) counts, prints each failure and keeps going; skip(why) records
    a part that could not run here; summary() prints the closing line 'NAME: N checks,
    M failed' and returns the exit code: 1 when a check failed, else 77 when a part was
    skipped, else 0."""

    def __init__(self, name):
        self.name = name
        self.count = 0
        self.failures = []
        self.skipped = []

    def __call__(self, cond, what):
        self.count += 1
        if not cond:
            self.failures.append(what)
            print("FAIL:", what, file=sys.stderr)
        return cond

    def skip(self, why):
        self.skipped.append(why)
        print("%s: not run: %s" % (self.name, why), file=sys.stderr)

    def done_with(self, tmp):
        """Removes the scratch directory tmp when no check failed; keeps it and says
        where when one did (to look at what the programs wrote)."""
        if not self.failures:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("files kept in", tmp, file=sys.stderr)

    def summary(self):
        print("%s: %d checks, %d failed" % (self.name, self.count, len(self.failures)),
              file=sys.stderr)
        if self.failures:
            return 1
        if self.skipped:
            print("%s: skipped (not every check could run)" % self.name, file=sys.stderr)
            return SKIP
        return 0


class Failure(Exception):
    """A failed check of a test that stops at its first failure (require)."""


def require(cond, what):
    """Raises Failure(what) unless cond holds; prints 'ok: what' when it does."""
    if not cond:
        raise Failure(what)
    print("ok:", what, flush=True)


def wait_until(pred, timeout, what):
    """Calls pred() every 50 ms until it returns true, for at most timeout seconds of
    the monotonic clock; raises Failure naming what when the deadline passes first.
    Waits for a condition, never for a time: a slow machine only makes it longer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise Failure("timed out after %gs waiting for %s" % (timeout, what))


# ---- where things are ----------------------------------------------------------------

def source_dir():
    """The source tree: FACEMILL_SOURCE_DIR (ctest sets it), else the tree this file
    is in."""
    return os.environ.get("FACEMILL_SOURCE_DIR") or os.path.normpath(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def bin_dir(default=""):
    """The build's programs: FACEMILL_BIN_DIR (ctest sets it), else default."""
    return os.environ.get("FACEMILL_BIN_DIR", default)


def dir_args(*names, more=()):
    """The command line: --NAME DIR, required, for each of names (each DIR made
    absolute), and the optional arguments more: (flags, keywords of add_argument)."""
    ap = argparse.ArgumentParser()
    for n in names:
        ap.add_argument("--" + n, required=True)
    for flags, kw in more:
        ap.add_argument(*flags, **kw)
    a = ap.parse_args()
    for n in names:
        setattr(a, n, os.path.abspath(getattr(a, n)))
    return a


def samples_dir(src, name):
    """SRC/models/cache/samples (the sample photos models/fetch leaves), or None when it
    is missing, said on stderr as NAME's reason."""
    samples = os.path.join(src, "models", "cache", "samples")
    if os.path.isdir(samples):
        return samples
    print("%s: %s is missing: run models/fetch (ops/test does)" % (name, samples),
          file=sys.stderr)
    return None


def make_images(bindir, outdir, n, size=48, bad=False):
    """n distinct JPEGs of size x size in outdir (made if needed), and with bad the
    broken inputs too (tests/make_images.c), by the build's tests/make_images beside
    bindir; raises Failure when they cannot be made."""
    tool = os.path.join(os.path.dirname(bindir.rstrip("/")), "tests", "make_images")
    if not os.access(tool, os.X_OK):
        raise Failure("%s not built" % tool)
    os.makedirs(outdir, exist_ok=True)
    argv = [tool, outdir, str(n), "--size", str(size)] + (["--bad"] if bad else [])
    r = subprocess.run(argv, timeout=120)
    if r.returncode != 0:
        raise Failure("make_images exited %d" % r.returncode)


# ---- running programs ----------------------------------------------------------------

def user_env(home, extra=None):
    """A user's environment: PATH, an empty HOME, a UTF-8 locale, no facemill
    variables; the machine's OpenBLAS and sanitizer settings pass through."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8"}
    for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "ASAN_OPTIONS", "UBSAN_OPTIONS",
              "LSAN_OPTIONS"):
        if k in os.environ:
            env[k] = os.environ[k]
    env.update(extra or {})
    return env


def user_workspace(tmp, samples):
    """A user's place under tmp: an empty HOME (tmp/home) and a working directory
    (tmp/work) holding a copy of the sample photos (tmp/work/photos). Returns (home,
    work, photos)."""
    home = os.path.join(tmp, "home")
    work = os.path.join(tmp, "work")
    photos = os.path.join(work, "photos")
    os.makedirs(home)
    shutil.copytree(samples, photos)
    return home, work, photos


def run(cmd, env=None, cwd=None, timeout=300, user=None):
    """The finished process (output captured as text, bad UTF-8 replaced); one that
    cannot start or times out is a failed one (127, 124). user: run as that uid/gid
    (setpriv, root only)."""
    if user is not None:
        cmd = ["setpriv", "--reuid=%d" % user, "--regid=%d" % user, "--clear-groups"] + cmd
    try:
        return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                              errors="replace", timeout=timeout)
    except OSError as e:
        return subprocess.CompletedProcess(cmd, 127, "", "%s: %s" % (cmd[0], e))
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(cmd, 124, "", "%s: timed out after %ds" %
                                           (cmd[0], e.timeout))


def npm_cache():
    """npm's cache directory (where models/fetch left the packages), read before a test
    changes HOME; "" without npm."""
    p = run(["npm", "config", "get", "cache"], timeout=60)
    return p.stdout.strip() if p.returncode == 0 else ""


def stop_all(procs, timeout=15):
    """SIGTERM to the process group of every Popen in procs still running, then waits
    for all of them together for at most timeout seconds; a group that has not ended
    by then is killed (SIGKILL)."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


# ---- processes and files -------------------------------------------------------------

def proc_state(pid):
    """The state letter of a process (R, S, Z, ...), or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2]


def alive(pid):
    """pid runs (neither gone nor a zombie)."""
    return proc_state(pid) not in (None, "Z", "X")


def children_of(pid):
    """Living processes whose parent is pid, sorted."""
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            kids.append(int(name))
    return sorted(kids)


def read_text(path):
    """The text of the file at path (bad UTF-8 replaced), "" when there is none."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def sanitizer_report(data):
    """The first of SANITIZER_MARKS in data (bytes) as text, or None."""
    for m in SANITIZER_MARKS:
        if m in data:
            return m.decode()
    return None


# ---- result objects ------------------------------------------------------------------

def close(u, v, rel=1e-5, ab=1e-9):
    """u and v agree within rel (relative to the larger) plus ab."""
    return abs(u - v) <= ab + rel * max(abs(u), abs(v))


def flat(x, prefix=""):
    """A result object's leaves by dotted path, as pandas.json_normalize and the CSV
    export name them: {"box.x1": 10, "landmarks.nose.y": 12, "race_probs.Asian": ...}."""
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            out.update(flat(v, prefix + k + "."))
        return out
    return {prefix[:-1]: x}


def face_diff(a, b, rel, exact=()):
    """The fields in which two faces of the result schema (proto/RESULTS.md) differ, []
    when they agree: the same field names, equal strings and nulls, numbers within
    relative rel, and the fields under the top-level names in exact equal."""
    fa, fb = flat(a), flat(b)
    if sorted(fa) != sorted(fb):
        return ["fields %s / %s" % (sorted(fa), sorted(fb))]
    diff = []
    for k in sorted(fa):
        u, v = fa[k], fb[k]
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool)
                      for x in (u, v))
        if not numbers or k.split(".")[0] in exact:
            ok = u == v
        else:
            ok = close(u, v, rel=rel)
        if not ok:
            diff.append("%s %r / %r" % (k, u, v))
    return diff


def json_records(r):
    """The JSON objects a program printed one per line (a finished run's stdout)."""
    import json
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def top_class(probs):
    """The most probable class of a {class: probability} object."""
    return max(probs, key=lambda k: probs[k])
