#!/usr/bin/python3
"""test_export_safety.py - `facemill export` and `facemill report` never write over a
results database, and what they write is readable.

    test_export_safety.py --bin BUILD/bin

A database of 60 generated images (tests/make_results, a fifth of them failures):
  - `export DB -o DB`, `-o` a hard link to DB, `-o` another results database and
    `-o` a write-ahead log, and `report DB -o DB`, are refused with exit 2 and one
    line naming the file, before anything is written: every database keeps every
    row (counted here with Python's sqlite3, not through facemill), the WAL its bytes;
  - exporting to a new file and over an earlier export (a text file) works: 60 JSONL
    lines, a CSV of one row per face;
  - an image whose source holds bytes that are not UTF-8 (a Latin-1 file name) comes
    out as U+FFFD in both formats, the CSV decodes as UTF-8 (Python's csv reads it),
    and its CSV cell equals its JSON field.
Exit 0 pass, 1 fail.
"""
import csv
import io
import json
import os
import pwd
import shutil
import sqlite3
import stat
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fm_testlib import Checks, dir_args, run  # noqa: E402

check = Checks("test_export_safety")
N = 60


def rows(db):
    """The images in db, or -1 when it is no longer a results database."""
    try:
        c = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
        try:
            return c.execute("SELECT count(*) FROM images").fetchone()[0]
        finally:
            c.close()
    except sqlite3.Error:
        return -1


def refused(p, what, name):
    lines = p.stderr.strip().splitlines()
    check(p.returncode == 2 and len(lines) == 1 and name in lines[0] and
          "not overwritten" in lines[0],
          "%s: exit 2, one line naming %s (exit %d: %s)" % (what, name, p.returncode,
                                                           p.stderr.strip()[:300]))


def main():
    a = dir_args("bin")
    fm = os.path.join(a.bin, "facemill")
    make = os.path.join(os.path.dirname(a.bin), "tests", "make_results")
    tmp = tempfile.mkdtemp(prefix="test_export_safety.")
    db, other = os.path.join(tmp, "labels.db"), os.path.join(tmp, "other.db")
    p = run([make, db, str(N), "--fail-every", "5"])
    check(p.returncode == 0, "make_results: %s" % (p.stdout + p.stderr).strip())
    shutil.copy(db, other)
    link = os.path.join(tmp, "hard-link.db")
    os.link(db, link)
    wal = os.path.join(tmp, "x.db-wal")
    wal_bytes = bytes([0x37, 0x7F, 0x06, 0x82]) + bytes(28)
    open(wal, "wb").write(wal_bytes)

    refused(run([fm, "export", db, "-o", db]), "export DB -o DB", db)
    refused(run([fm, "export", "--format", "csv", db, "-o", link]), "export -o a hard link",
            link)
    refused(run([fm, "export", db, "-o", other]), "export -o another database", other)
    refused(run([fm, "export", db, "--output", wal]), "export -o a WAL", wal)
    refused(run([fm, "report", db, "-o", db]), "report DB -o DB", db)
    # the database's -wal and -shm by name, before SQLite has made them
    for sfx in ("-wal", "-shm"):
        check(not os.path.exists(db + sfx), "no %s yet" % sfx)
        refused(run([fm, "export", db, "-o", db + sfx]), "export -o DB" + sfx, db + sfx)
        refused(run([fm, "report", db, "-o", db + sfx]), "report -o DB" + sfx, db + sfx)
        check(not os.path.exists(db + sfx), "and none made (%s)" % sfx)
    for path in (db, other):
        n = rows(path)
        check(n == N, "%s keeps its %d rows (%d)" % (os.path.basename(path), N, n))
    check(open(wal, "rb").read() == wal_bytes, "the WAL keeps its bytes")

    if rows(db) != N:  # lost above: make it again to check the rest
        os.unlink(db)
        run([make, db, str(N), "--fail-every", "5"])
    # A source that is not UTF-8, as a Latin-1 file name is stored.
    c = sqlite3.connect(db)
    c.execute("UPDATE images SET source = CAST(X'6C6174696EFF2E6A7067' AS TEXT) "
              "WHERE id = (SELECT min(id) FROM images WHERE error_code = 0)")
    c.commit()
    c.close()

    out = os.path.join(tmp, "out.jsonl")
    open(out, "w").write("an earlier export\n")
    p = run([fm, "export", db, "-o", out])
    check(p.returncode == 0, "export over an earlier export: exit 0 (%s)" % p.stderr.strip())
    data = open(out, "rb").read()
    try:
        objs = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    except ValueError as e:
        objs = []
        check(False, "JSONL is UTF-8 JSON: %s" % e)
    check(len(objs) == N, "JSONL: %d lines (%d)" % (N, len(objs)))
    latin = [o for o in objs if o["source"].startswith("latin")]
    check([o["source"] for o in latin] == ["latin\ufffd.jpg"],
          "JSONL: the Latin-1 name as latin\\ufffd.jpg (%s)" % [o["source"] for o in latin])

    out_csv = os.path.join(tmp, "out.csv")
    p = run([fm, "export", "--format", "csv", db, "-o", out_csv])
    check(p.returncode == 0, "export --format csv: exit 0 (%s)" % p.stderr.strip())
    raw = open(out_csv, "rb").read()
    try:
        table = list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))
    except UnicodeDecodeError as e:
        table = []
        check(False, "the CSV decodes as UTF-8: %s" % e)
    faces = sum(max(len(o["faces"]), 1) for o in objs)
    check(len(table) == faces, "CSV: one row per face or faceless image, %d (%d)" %
          (faces, len(table)))
    latin_rows = {r["source"] for r in table if r["source"].startswith("latin")}
    check(latin_rows == {"latin\ufffd.jpg"},
          "CSV: the Latin-1 name as in the JSON (%s)" % latin_rows)

    # report: the page is UTF-8 (the Latin-1 name as U+FFFD); a link is followed, not
    # replaced; a device is written, not replaced
    page, target = os.path.join(tmp, "page.html"), os.path.join(tmp, "real.html")
    os.symlink(target, page)
    p = run([fm, "report", db, "-o", page])
    check(p.returncode == 0 and os.path.islink(page) and os.path.isfile(target),
          "report -o a symbolic link writes the file it names, the link stays (%s)" %
          p.stderr.strip()[-300:])
    html = open(target, "rb").read()
    try:
        text = html.decode("utf-8")
        check("latin\ufffd.jpg" in text,
              "the page shows the Latin-1 name as latin\ufffd.jpg")
    except UnicodeDecodeError as e:
        check(False, "the report page decodes as UTF-8: %s" % e)
    if os.geteuid() == 0 and shutil.which("setpriv"):
        # a sound database in a folder another user cannot write (SQLite's -shm)
        ro = os.path.join(tmp, "ro")
        os.makedirs(ro)
        shutil.copy(other, os.path.join(ro, "x.db"))
        os.chmod(os.path.join(ro, "x.db"), 0o644)
        os.chmod(ro, 0o755)
        os.chmod(tmp, 0o755)
        nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", fm]
        # nothing writes it (no -wal beside it): read as an immutable file, the same rows
        p = run(nobody + ["export", os.path.join(ro, "x.db")])
        mine = run([fm, "export", other])
        check(p.returncode == 0 and p.stdout and p.stdout == mine.stdout,
              "a database in a folder its reader cannot write, nothing writing it: "
              "exported as it is (%d: %s)" % (p.returncode, p.stderr.strip()[-300:]))
        # spelt with a leading "//" (no host name in SQLite's URI), and with an empty
        # -wal beside it (a reader's: it holds no transaction)
        open(os.path.join(ro, "x.db-wal"), "wb").close()
        p = run(nobody + ["export", "/" + os.path.join(ro, "x.db")])
        check(p.returncode == 0 and p.stdout == mine.stdout,
              "the same through //PATH, an empty -wal beside it (%d: %s)" %
              (p.returncode, p.stderr.strip()[-300:]))
        # a -wal holding something (a writer may be at work, or its last words are
        # there): the reason, not "not a results database" (a user told so may delete it)
        with open(os.path.join(ro, "x.db-wal"), "wb") as f:
            f.write(b"\0" * 32)
        p = run(nobody + ["export", os.path.join(ro, "x.db")])
        check(p.returncode == 1 and "not a facemill results database" not in p.stderr and
              "folder must be writable" in p.stderr,
              "with a -wal holding data: the reason, not 'not a results database' (%d: %s)" %
              (p.returncode, p.stderr.strip()[-300:]))
        # label writes: its own database there is refused before anything starts, even
        # when nothing writes it (export's immutable reading is not for writers)
        os.unlink(os.path.join(ro, "x.db-wal"))
        os.chown(os.path.join(ro, "x.db"), pwd.getpwnam("nobody").pw_uid, -1)
        p = run(nobody + ["label", ro, "-o", os.path.join(ro, "x.db")])
        check(p.returncode == 2 and "folder must be writable" in p.stderr,
              "label -o a database in a folder its user cannot write: a usage error saying "
              "why (%d: %s)" % (p.returncode, p.stderr.strip()[-300:]))
    if os.geteuid() == 0:
        null = os.path.join(tmp, "null")
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        p = run([fm, "report", db, "-o", null])
        check(p.returncode == 0 and stat.S_ISCHR(os.lstat(null).st_mode),
              "report -o a device writes into it and leaves it a device (%s)" %
              p.stderr.strip()[-300:])
        full = os.path.join(tmp, "full")
        os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
        p = run([fm, "report", db, "-o", full])
        check(p.returncode == 1 and stat.S_ISCHR(os.lstat(full).st_mode) and
              "No space left" in p.stderr,
              "report -o a full device fails, exit 1, the device stays (%d: %s)" %
              (p.returncode, p.stderr.strip()[-300:]))
    check.done_with(tmp)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
