#!/usr/bin/python3
"""test_report_scale.py - `facemill report` of a large results database stays within
its memory bound, and its page within its size bound.

    test_report_scale.py --bin BUILD/bin [--rows N] [--bound-mib M] [--growth-mib G]
                         [--sanitized]

tests/make_results writes N images (default 1,000,000; about 1.4 faces each, one in
97 failed) through the sink's own insert, and a database of N/50 images the same way.
`facemill report` runs on both; each run's peak resident memory is read from the
kernel (wait4's rusage of that process alone). Checked:
  - the report of N images peaks below M MiB (default 64: the program, SQLite's page
    cache capped at 16 MiB by the report, a sort of the same size, one decoded
    original and a bounded gallery);
  - from N/50 to N images the peak grows by at most G MiB (default 40: the two SQLite
    caps and some slack), i.e. memory does not follow the database;
  - the page counts every image, face and failure (the database's own counts, read
    with Python's sqlite3), and stays under include/facemill/report.h's bound.
In an AddressSanitizer build (--sanitized) the report runs with a 4 MiB quarantine,
and CMake passes fewer rows and a bound that includes the sanitizer's own memory.
Time is measured and printed (generation, report, queries), never asserted.
Exit 0 pass, 1 fail.
"""
import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fm_testlib import Checks  # noqa: E402

PAGE_BOUND = 4_500_000
check = Checks("test_report_scale")


def timed(cmd, cwd=None, env=None):
    """Runs cmd; returns (exit code, stderr text, seconds, peak RSS in MiB) of that
    process alone."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    out = p.stdout.read()  # to EOF; the process is reaped by wait4, not by Popen
    p.stdout.close()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return (p.returncode, out.decode("utf-8", "replace"), time.monotonic() - t0,
            ru.ru_maxrss / 1024.0)


def counts(db):
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    try:
        return con.execute("SELECT count(*), coalesce(sum(n_faces), 0),"
                           " coalesce(sum(error_code != 0), 0) FROM images").fetchone()
    finally:
        con.close()


def report(a, tmp, rows):
    db = os.path.join(tmp, "r%d.db" % rows)
    tool = os.path.join(os.path.dirname(a.bin), "tests", "make_results")
    rc, out, gen_s, _ = timed([tool, db, str(rows), "--fail-every", "97"])
    check(rc == 0, "make_results %d: %s" % (rows, out.strip()))
    page = os.path.join(tmp, "r%d.html" % rows)
    env = dict(os.environ)
    if a.sanitized:
        # ASan keeps freed memory in quarantine (256 MiB by default), which is the
        # sanitizer's memory, not the report's: keep it small so the bound means
        # the same thing in both builds.
        env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") +
                               ":quarantine_size_mb=4:thread_local_quarantine_size_kb=64")
    rc, out, rep_s, rss = timed([os.path.join(a.bin, "facemill"), "report", db, "-o", page],
                                env=env)
    check(rc == 0, "facemill report of %d images exits 0: %s" % (rows, out.strip()))
    size = os.path.getsize(page) if os.path.exists(page) else 0
    print("rows %d: database %.0f MB written in %.1f s; report %.1f s, peak RSS %.1f MiB, "
          "page %d bytes\n  %s" % (rows, os.path.getsize(db) / 1e6, gen_s, rep_s, rss, size,
                                   out.strip()), flush=True)
    images, faces, failed = counts(db)
    text = open(page, encoding="utf-8").read() if size else ""
    for key, want in (("n-images", images), ("n-faces", faces), ("n-failed", failed)):
        m = re.search(r'id="%s" data-value="(\d+)"' % key, text)
        check(m and int(m.group(1)) == want, "%d rows: #%s is %s (database: %d)" %
              (rows, key, m and m.group(1), want))
    check(0 < size < PAGE_BOUND, "%d rows: page of %d bytes, under %d" % (rows, size,
                                                                         PAGE_BOUND))
    os.remove(db)
    return rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--bound-mib", type=float, default=64)
    ap.add_argument("--growth-mib", type=float, default=40)
    ap.add_argument("--sanitized", action="store_true",
                    help="an AddressSanitizer build: its quarantine is kept small")
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)
    tmp = tempfile.mkdtemp(prefix="fmscale.")
    try:
        small = report(a, tmp, max(1000, a.rows // 50))
        big = report(a, tmp, a.rows)
        check(big < a.bound_mib, "report of %d images: peak RSS %.1f MiB < %.0f MiB" %
              (a.rows, big, a.bound_mib))
        check(big - small <= a.growth_mib,
              "peak RSS grows by %.1f MiB from %d to %d images (at most %.0f)" %
              (big - small, max(1000, a.rows // 50), a.rows, a.growth_mib))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
