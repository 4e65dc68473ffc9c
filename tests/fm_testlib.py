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


def close(u, v, rel=1.5e-3, ab=2e-6):
    """u and v agree to the digits `facemill predict` prints (4 significant: %.4g);
    export and the database keep 7."""
    return abs(u - v) <= ab + rel * max(abs(u), abs(v))


def npm_cache():
    """npm's cache directory (where models/fetch left the packages), read before a test
    changes HOME; "" without npm."""
    p = run(["npm", "config", "get", "cache"], timeout=60)
    return p.stdout.strip() if p.returncode == 0 else ""
