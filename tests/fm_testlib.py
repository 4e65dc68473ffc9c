"""fm_testlib.py - what the Python tests that run facemill as a user share: a check
that records failures and keeps going, a user's environment, running a program with
its output captured, and comparing numbers to the digits `facemill predict` prints.
"""
import os
import subprocess
import sys


class Checks:
    """check(cond, what) counts, prints each failure and keeps going; summary() prints
    the closing line 'NAME: N checks, M failed'."""

    def __init__(self, name):
        self.name = name
        self.count = 0
        self.failures = []

    def __call__(self, cond, what):
        self.count += 1
        if not cond:
            self.failures.append(what)
            print("FAIL:", what, file=sys.stderr)
        return cond

    def summary(self):
        print("%s: %d checks, %d failed" % (self.name, self.count, len(self.failures)),
              file=sys.stderr)
        return 1 if self.failures else 0


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


def run(cmd, env=None, cwd=None, timeout=300, user=None):
    """The finished process (text output captured); one that cannot start or times out
    is a failed one (127, 124). user: run as that uid/gid (setpriv, root only)."""
    if user is not None:
        cmd = ["setpriv", "--reuid=%d" % user, "--regid=%d" % user, "--clear-groups"] + cmd
    try:
        return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)
    except OSError as e:
        return subprocess.CompletedProcess(cmd, 127, "", "%s: %s" % (cmd[0], e))
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(cmd, 124, "", "%s: timed out after %ds" %
                                           (cmd[0], e.timeout))


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


def npm_cache():
    """npm's cache directory (where models/fetch left the packages), read before a test
    changes HOME; "" without npm."""
    p = run(["npm", "config", "get", "cache"], timeout=60)
    return p.stdout.strip() if p.returncode == 0 else ""
