#!/usr/bin/env python3
"""test_service.py - the service end to end with real processes: facemill-broker,
facemill-sink, facemill-worker and facemill submit/label/export, on ipc:// endpoints in
a temporary directory (the network namespace case uses addresses it creates on a veth
pair it creates). Cases that test the queue run workers with --decode-only (no models);
bad_inputs, kill_worker, netns, full_pipeline, long_batch and label_orphans run the
real pipeline with the shipped defaults (no model setting: programs run from build/bin
find the fetched models in models/cache) on the sample photos (models/cache/samples)
and photos made from them; they exit 77 when models/fetch has not run.

One case per run (--case NAME), so ctest reports each on its own:
  flow        2,000 generated jobs, broker + 2 worker processes + sink: every job
              committed exactly once; export has one line per image
  kill_worker kill -9 of a real worker mid-run (fewer rows than jobs at the kill):
              nothing lost, nothing duplicated, the other worker's pipeline process
              never restarted
  kill_broker kill -9 of the broker mid-run and a restart from its journal
  kill_sink   kill -9 of the sink mid-run and a restart
  slowdown    a broker queue bound of 8: the client honours SlowDown, nothing lost
  inputs      tar.gz and zip archives and a file list on stdin; --by-path
  bad_inputs  real workers on the sample photos and corrupt, truncated, empty and
              non-JPEG inputs: one error row with its reason per bad input, at attempt
              1, from the same pipeline processes (none died and was restarted); the
              photos are labelled; submit exits 1
  label       `facemill label` killed (-9) twice mid-run and rerun: the same database
              contents as an uninterrupted run
  python      ops/cluster's secured cluster (the keys it makes, DIR/client.yaml):
              ops/examples/submit.py with the client certificate and the broker's
              public key, facemill submit and status --config DIR/client.yaml, and a
              client without keys left unanswered
  netns       a real worker in another network namespace labels photos for a broker
              in the host namespace, every connection CurveZMQ with keys made by
              `facemill keygen` (root and `ip netns` needed; exit 77 otherwise)
  restart_child  kill -9 of one pipeline process of a worker: its parent starts a new
              one, which takes jobs; every job committed exactly once
  broker_outage  the broker killed (-9) for longer than the workers' expiry and
              restarted: the same worker processes reconnect and finish the job set
  no_broker   submit with no broker at its endpoint: one warning saying so, Ctrl-C
              says the broker holds none of the jobs (exit 3); the same command with
              the cluster up stores every image once
  restart_progress  the broker stopped and started again on its journal while it
              holds a whole run: submit's progress lines count what is stored after
              the restart (no Commit notice reaches the client for those jobs)
  sigterm_worker SIGTERM to a worker mid-run: it finishes or hands back its jobs,
              leaves (WorkerBye) and exits 0 promptly; the other worker does the rest
  worker_name every result names the process that produced it (host:pid/index, or
              worker.name); export --times and status show it
  label_orphans  kill -9 of `facemill label` mid-run (real pipeline): no worker process
              outlives it by more than 3 s
  full_pipeline  2 real worker processes over the sample photos: every field of every
              face in the export (box, score, landmarks, age, age_std, gender, race
              and their probabilities) equals what `facemill predict` prints
  long_batch  batches far longer than broker.worker_expiry_ms (set to a third of the
              fastest photo's time, measured here): the heartbeats go on, no worker is
              dropped, every job runs once

Every kill happens mid-run: each kill case checks that fewer rows than jobs were
stored when it struck. Every wait is bounded and waits for a state, not a time.
Exit 0 pass, 1 fail, 77 skip (also when a case could run only part of its checks).
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fm_testlib import face_diff  # noqa: E402

SKIP = 77


class Failure(Exception):
    pass


class Skip(Exception):
    """The case cannot run (all of) its checks here: exit 77."""


def check(cond, what):
    if not cond:
        raise Failure(what)
    print("ok:", what, flush=True)


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise Failure("timed out after %gs waiting for %s" % (timeout, what))


class Cluster:
    """A broker, a sink and workers on ipc:// endpoints in one temporary directory."""

    def __init__(self, bindir, srcdir, tmp, extra_sets=()):
        self.bin = bindir
        self.src = srcdir
        self.dir = tmp
        self.db = os.path.join(tmp, "results.db")
        self.procs = []
        self.endpoints = {
            "broker.clients": "ipc://%s/clients" % tmp,
            "broker.workers": "ipc://%s/workers" % tmp,
            "sink.commits": "ipc://%s/commits" % tmp,
            "sink.results": "ipc://%s/results" % tmp,
        }
        self.certs = {}  # role -> its security.cert, once secure() made keys
        self.sets = dict(self.endpoints)
        self.sets.update({
            "broker.journal": os.path.join(tmp, "journal.db"),
            "sink.db": self.db,
            "broker.heartbeat_ms": "200",
            "broker.worker_expiry_ms": "1500",
            "broker.job_timeout_ms": "5000",
            "client.retry_ms": "2000",
            "client.progress_ms": "1000",
            "log.level": "info",
        })
        for kv in extra_sets:
            k, v = kv.split("=", 1)
            self.sets[k] = v

    def args(self, overrides=None, role="client"):
        sets = dict(self.sets)
        if role in self.certs:
            sets["security.cert"] = self.certs[role]
        sets.update(overrides or {})
        out = []
        for k, v in sets.items():
            out += ["--set", "%s=%s" % (k, v)]
        return out

    def secure(self):
        """Keys for every role (`facemill keygen` into DIR/keys, each public key in
        its role's allowlist) and the settings naming them: from here on every
        program of the cluster runs CurveZMQ with its own certificate."""
        keys = os.path.join(self.dir, "keys")
        for allow in ("clients", "workers", "sink"):
            os.makedirs(os.path.join(keys, allow), exist_ok=True)
        for role, allow in (("broker", None), ("sink", "sink"), ("worker", "workers"),
                            ("client", "clients")):
            subprocess.run([os.path.join(self.bin, "facemill"), "keygen", role, "-d", keys],
                           check=True, capture_output=True, timeout=30)
            if allow:
                shutil.copy(os.path.join(keys, role + ".key"), os.path.join(keys, allow))
            self.certs[role] = role + ".key_secret"
        self.sets.update({"security.keys_dir": keys, "security.broker_key": "broker.key",
                          "security.sink_key": "sink.key", "security.clients_dir": "clients",
                          "security.workers_dir": "workers", "security.sink_dir": "sink"})
        return keys

    def start(self, name, argv, netns=None):
        log = open(os.path.join(self.dir, name + ".log"), "ab")
        if netns:
            argv = ["ip", "netns", "exec", netns] + argv
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True, cwd=self.dir)
        p.fm_name = name
        self.procs.append(p)
        return p

    def broker(self, overrides=None):
        return self.start("broker", [os.path.join(self.bin, "facemill-broker")] +
                          self.args(overrides, "broker"))

    def sink(self, overrides=None):
        return self.start("sink", [os.path.join(self.bin, "facemill-sink")] +
                          self.args(overrides, "sink"))

    def worker(self, name="worker", processes=1, overrides=None, netns=None,
               decode_only=True):
        return self.start(name, [os.path.join(self.bin, "facemill-worker"), "--processes",
                                 str(processes)] + (["--decode-only"] if decode_only else [])
                          + self.args(overrides, "worker"), netns=netns)

    def submit(self, inputs, tag, overrides=None):
        return self.start("submit", [os.path.join(self.bin, "facemill"), "submit", "--tag",
                                     tag, "--progress", "lines"] + self.args(overrides) +
                          list(inputs))

    def kill9(self, p):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(10)

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)

    def rows(self):
        """(images, distinct job ids, failed) in the results database, or zeros."""
        if not os.path.exists(self.db):
            return (0, 0, 0)
        try:
            con = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True, timeout=5)
            try:
                r = con.execute("SELECT count(*), count(DISTINCT job_id),"
                                " coalesce(sum(error_code != 0), 0) FROM images").fetchone()
            finally:
                con.close()
            return tuple(r)
        except sqlite3.Error:
            return (0, 0, 0)

    def dump_logs(self):
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".log"):
                with open(os.path.join(self.dir, name), "rb") as f:
                    data = f.read()[-3000:]
                sys.stderr.write("---- %s (tail)\n%s\n" % (name, data.decode("utf-8", "replace")))


SANITIZER_MARKS = (b"AddressSanitizer", b"LeakSanitizer", b"runtime error:")


def sanitizer_clean(data, what):
    for m in SANITIZER_MARKS:
        if m in data:
            raise Failure("%s: sanitizer report (%s)" % (what, m.decode()))


def make_images(bindir, outdir, n, size=48, bad=False):
    os.makedirs(outdir, exist_ok=True)
    tool = os.path.join(os.path.dirname(bindir.rstrip("/")), "tests", "make_images")
    argv = [tool, outdir, str(n), "--size", str(size)] + (["--bad"] if bad else [])
    subprocess.run(argv, check=True, timeout=120)


def proc_state(pid):
    """The state letter of a process (R, S, Z, ...), or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2]


def alive(pid):
    return proc_state(pid) not in (None, "Z", "X")


def children_of(pid):
    """Living processes whose parent is pid."""
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


def wait_children(p, n, timeout=60):
    """Waits until worker parent p has n living pipeline processes; returns their pids."""
    kids = []

    def enough():
        kids[:] = children_of(p.pid)
        return len(kids) == n
    wait_until(enough, timeout, "%d pipeline processes of pid %d" % (n, p.pid))
    return list(kids)


def read_log(c, name):
    with open(os.path.join(c.dir, name + ".log"), "rb") as f:
        return f.read().decode("utf-8", "replace")


def worker_names(c, log_name):
    """Names the pipeline processes of a worker announced ("worker NAME: credit")."""
    return re.findall(r" worker (\S+): credit ", read_log(c, log_name))


def db_query(c, sql, args=()):
    con = sqlite3.connect("file:%s?mode=ro" % c.db, uri=True, timeout=5)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def finish_submit(c, p, timeout):
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        raise Failure("facemill submit did not finish within %gs (rows %s)" %
                      (timeout, c.rows()))


def exactly_once(c, n):
    images, distinct, _ = c.rows()
    check(images == n and distinct == n,
          "%d jobs stored exactly once (rows %d, distinct %d)" % (n, images, distinct))


def mid_run(c, n, what):
    """After a kill: fewer than n rows stored (read after the kill, so at most what
    was stored when it struck): the kill really interrupted the run."""
    at = c.rows()[0]
    check(at < n, "%s at %d of %d rows: mid-run" % (what, at, n))
    return at


def broker_status(c, tag=None):
    """`facemill status` of c's broker (stdout; with the counts of tag when given), or
    "" when it does not answer."""
    try:
        r = subprocess.run([os.path.join(c.bin, "facemill"), "status"] +
                           (["--tag", tag] if tag else []) + c.args(),
                           capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        return ""
    return r.stdout.decode("utf-8", "replace") if r.returncode == 0 else ""


def settle(c, timeout=60):
    """Waits until the broker has no job queued, at a worker or awaiting commit and no
    worker holds one: no re-dispatched job is left to add a late duplicate."""
    def idle():
        s = broker_status(c)
        m = re.search(r"queue: +(\d+) waiting .*, (\d+) at workers, (\d+) awaiting commit", s)
        return bool(m) and m.groups() == ("0", "0", "0") and not re.search(r" busy [1-9]", s)
    wait_until(idle, timeout, "the broker with no job queued, at a worker or awaiting commit")


def same_children(c, procs, before):
    """procs (worker parents) still run with the pipeline processes they had (before:
    their children, in order): none died and was restarted."""
    after = [children_of(p.pid) for p in procs]
    names = ", ".join(p.fm_name for p in procs)
    check(all(p.poll() is None for p in procs) and after == before,
          "%s: the same pipeline processes %s ran throughout (now %s)" %
          (names, before, after))
    restarts = [p.fm_name for p in procs if "restarting" in read_log(c, p.fm_name)]
    check(not restarts, "no pipeline process died and was restarted (%s)" % restarts)


# ---- cases --------------------------------------------------------------------------

def case_flow(c, a):
    make_images(a.bin, os.path.join(c.dir, "in"), 2000)
    c.sink()
    c.broker()
    c.worker("worker-a")
    c.worker("worker-b")
    p = c.submit([os.path.join(c.dir, "in")], "flow")
    check(finish_submit(c, p, 240) == 0, "submit exits 0")
    exactly_once(c, 2000)
    out = subprocess.run([os.path.join(a.bin, "facemill"), "export", c.db], check=True,
                         capture_output=True, timeout=60).stdout.decode()
    lines = [json.loads(x) for x in out.splitlines()]
    check(len(lines) == 2000, "export: 2000 JSONL objects")
    check(all("faces" in o and o["width"] == 48 and len(o["sha256"]) == 64 for o in lines),
          "export: every object has faces, width and sha256")
    csv = subprocess.run([os.path.join(a.bin, "facemill"), "export", "--format", "csv",
                          c.db], check=True, capture_output=True, timeout=60).stdout.decode()
    check(len(csv.splitlines()) == 2001, "export: CSV header + 2000 faceless rows")
    st = subprocess.run([os.path.join(a.bin, "facemill"), "status", "--tag", "flow"] +
                        c.args(), capture_output=True, timeout=30)
    check(st.returncode == 0 and b"2000 jobs, 2000 committed" in st.stdout,
          "status counts the tag: %s" % st.stdout.decode().strip().replace("\n", " | "))


def kill_case(c, a, victim):
    """kill -9 of the broker, the sink (2,000 decode-only jobs) or a worker (real
    workers on photos made from the samples) mid-run."""
    inp = os.path.join(c.dir, "in")
    real = victim == "worker"
    if real:
        # Real jobs cost ~100-150 ms here (several times that under ASan): 100 of
        # them keep two workers busy for seconds, and the kill comes at a quarter.
        n, first = 100, 25
        make_photos(need_pipeline(a, c), inp, n)
    else:
        n, first = 2000, 300
        make_images(a.bin, inp, n, size=256)
    sink = c.sink()
    broker = c.broker()
    w1 = c.worker("worker-a", decode_only=not real)
    w2 = c.worker("worker-b", decode_only=not real)
    kids = [wait_children(w1, 1, 120), wait_children(w2, 1, 120)]
    p = c.submit([inp], "kill", {"client.chunk": "16"})
    wait_until(lambda: c.rows()[0] >= first, 300, "%d results before the kill" % first)
    if victim == "worker":
        c.kill9(w1)
        mid_run(c, n, "killed worker-a (-9)")
    elif victim == "broker":
        c.kill9(broker)
        mid_run(c, n, "killed the broker (-9)")
        time.sleep(1.0)  # down for a moment, then back from its journal
        c.broker()
    else:
        c.kill9(sink)
        mid_run(c, n, "killed the sink (-9)")
        # down for ten heartbeats (2 s here): status says the sink is silent, then
        # back on its database
        wait_until(lambda: "is facemill-sink running" in broker_status(c), 30,
                   "status to say the killed sink is silent")
        check(True, "status while the sink is down: %s" %
              [ln for ln in broker_status(c).splitlines() if ln.startswith("sink:")])
        c.sink()
        wait_until(lambda: re.search(r"^sink: +heard \d+\.\d s ago$", broker_status(c), re.M),
                   30, "status to say the restarted sink is heard")
    rc = finish_submit(c, p, 600)
    check(rc == 0, "submit exits 0 (got %d)" % rc)
    # Re-dispatched jobs may still be running: once none is left, none added a row.
    settle(c)
    exactly_once(c, n)
    if real:
        same_children(c, [w2], kids[1:])
        bad = db_query(c, "SELECT count(*) FROM images WHERE error_code != 0 OR model IS NULL"
                       " OR model NOT LIKE '%heads%'")[0][0]
        faces = db_query(c, "SELECT count(*) FROM faces WHERE age IS NOT NULL")[0][0]
        check(bad == 0 and faces >= n, "every photo labelled by the full pipeline "
              "(%d faces with attributes, %d rows without)" % (faces, bad))
        again = db_query(c, "SELECT count(*) FROM images WHERE attempt > 1")[0][0]
        check(True, "%d jobs of worker-a ran again on worker-b" % again)
    else:
        same_children(c, [w1, w2], kids)


def case_kill_worker(c, a):
    kill_case(c, a, "worker")


def case_kill_broker(c, a):
    kill_case(c, a, "broker")


def case_kill_sink(c, a):
    kill_case(c, a, "sink")


def case_bad_inputs(c, a):
    samples = need_pipeline(a, c)
    inp = os.path.join(c.dir, "in")
    make_images(a.bin, inp, 2, bad=True)  # 2 faceless JPEGs and 4 broken files
    for s in samples:
        shutil.copy(s, inp)
    with open(samples[0], "rb") as f:
        data = f.read()
    with open(os.path.join(inp, "bad_truncated_photo.jpg"), "wb") as f:
        f.write(data[:len(data) // 3])  # a real photo cut short: decoding fails late
    open(os.path.join(inp, "bad_empty.jpg"), "wb").close()
    bad = ("bad_corrupt.jpg", "bad_truncated.jpg", "bad_format.png", "bad_text.jpg",
           "bad_truncated_photo.jpg", "bad_empty.jpg")
    total = 2 + len(samples) + len(bad)
    c.sink()
    c.broker()
    w = c.worker("worker", processes=2, decode_only=False)
    kids = [wait_children(w, 2, 120)]
    p = c.submit([inp], "bad")
    check(finish_submit(c, p, 600) == 1, "submit exits 1: some images failed")
    images, distinct, failed = c.rows()
    check(images == total and distinct == total and failed == len(bad),
          "%d rows, %d of them errors (rows %d, distinct %d, errors %d)" %
          (total, len(bad), images, distinct, failed))
    names = worker_names(c, "worker")
    rows = {r[0]: r[1:] for r in db_query(
        c, "SELECT source, error_code, error_text, attempt, worker FROM images")}
    for name in bad:
        code, text, attempt, by = rows.get(os.path.join(inp, name), (0, None, None, None))
        # A pipeline process that crashed on it would be restarted and the job tried
        # again, ending as "quarantined after 3 attempts": attempt 1 rules that out.
        check(code != 0 and text and len(text) > 4 and not text.startswith("quarantined")
              and attempt == 1 and by in names,
              "%s: error row '%s %s' at attempt %s from %s" % (name, code, text, attempt, by))
    check("PNG" in rows[os.path.join(inp, "bad_format.png")][1], "the PNG is named")
    retried = [(k, v[2]) for k, v in rows.items() if v[2] != 1]
    check(not retried, "every job ran once: %s" % retried)
    faces = dict(db_query(c, "SELECT source, n_faces FROM images WHERE error_code = 0 AND"
                             " model LIKE '%heads%'"))
    check(all(faces.get(os.path.join(inp, os.path.basename(s)), 0) > 0 for s in samples),
          "the sample photos labelled by the full pipeline among the bad inputs: %s" %
          sorted(faces.values()))
    same_children(c, [w], kids)
    # and it still labels: a sample photo again under a new tag
    p = c.submit([samples[1]], "after-bad")
    check(finish_submit(c, p, 300) == 0, "the worker labels after the bad inputs")
    n = db_query(c, "SELECT n_faces FROM images WHERE tag = 'after-bad'")
    check(len(n) == 1 and n[0][0] > 0, "%s: %s faces" % (os.path.basename(samples[1]), n))
    same_children(c, [w], kids)


def case_slowdown(c, a):
    make_images(a.bin, os.path.join(c.dir, "in"), 300)
    c.sink()
    c.broker({"broker.max_queue": "8"})
    # No worker yet: the queue fills to its bound and the client is told to slow
    # down (it logs that at debug level) before any worker drains it.
    p = c.submit([os.path.join(c.dir, "in")], "slow", {"client.chunk": "4",
                                                        "log.level": "debug"})
    wait_until(lambda: "broker queue full (8/8)" in read_log(c, "submit"), 60,
               "the client told to slow down at the queue bound")
    c.worker("worker", processes=2)
    check(finish_submit(c, p, 120) == 0, "submit exits 0 against a queue bound of 8")
    with open(os.path.join(c.dir, "submit.log"), "rb") as f:
        log = f.read()
    check(b"asked to slow down" in log, "the broker sent SlowDown and it was honoured")
    exactly_once(c, 300)


def case_inputs(c, a):
    import tarfile
    import zipfile
    src = os.path.join(c.dir, "src")
    make_images(a.bin, src, 12)
    names = sorted(os.listdir(src))
    with tarfile.open(os.path.join(c.dir, "a.tar.gz"), "w:gz") as t:
        for n in names[:5]:
            t.add(os.path.join(src, n), arcname="sub/" + n)
    with zipfile.ZipFile(os.path.join(c.dir, "b.zip"), "w") as z:
        for n in names[5:9]:
            z.write(os.path.join(src, n), arcname=n)
        z.writestr("notes.txt", "not an image")  # skipped: no image extension
    listing = "".join(os.path.join(src, n) + "\n" for n in names[9:])
    fm = os.path.join(a.bin, "facemill")
    r = subprocess.run([fm, "label", os.path.join(c.dir, "a.tar.gz"),
                        os.path.join(c.dir, "b.zip"), "-", "-o", c.db, "-j", "1",
                        "--worker-arg", "--decode-only", "--progress", "none",
                        "--set", "log.level=warn"], input=listing.encode(),
                       capture_output=True, timeout=120, cwd=c.dir)
    sanitizer_clean(r.stderr, "facemill label")
    check(r.returncode == 0, "label of tar.gz + zip + stdin list exits 0: %s" %
          r.stderr.decode()[-500:])
    con = sqlite3.connect("file:%s?mode=ro" % c.db, uri=True)
    sources = sorted(x[0] for x in con.execute("SELECT source FROM images"))
    con.close()
    check(len(sources) == 12, "12 images stored (got %d)" % len(sources))
    check(sum(s.startswith(os.path.join(c.dir, "a.tar.gz") + ":sub/") for s in sources) == 5,
          "tar members named ARCHIVE:MEMBER")
    check(sum(":" in s and "b.zip" in s for s in sources) == 4, "zip members stored")
    # --by-path: the workers read the files themselves
    db2 = os.path.join(c.dir, "bypath.db")
    r = subprocess.run([fm, "label", src, "-o", db2, "-j", "1", "--by-path",
                        "--worker-arg", "--decode-only", "--progress", "none",
                        "--set", "log.level=warn"], capture_output=True, timeout=120,
                       cwd=c.dir)
    check(r.returncode == 0, "label --by-path exits 0")
    con = sqlite3.connect("file:%s?mode=ro" % db2, uri=True)
    n, w = con.execute("SELECT count(*), sum(width = 48) FROM images").fetchone()
    con.close()
    check(n == 12 and w == 12, "--by-path: 12 images decoded by the workers")


def export_without_times(bindir, db):
    return subprocess.run([os.path.join(bindir, "facemill"), "export", db], check=True,
                          capture_output=True, timeout=120).stdout


def case_label(c, a):
    inp = os.path.join(c.dir, "in")
    make_images(a.bin, inp, 2000, size=256, bad=True)
    fm = os.path.join(a.bin, "facemill")
    common = ["--progress", "lines", "-j", "2", "--worker-arg", "--decode-only",
              "--set", "client.chunk=16", "--set", "log.level=warn"]
    ref = os.path.join(c.dir, "ref.db")
    r = subprocess.run([fm, "label", inp, "-o", ref] + common, capture_output=True,
                       timeout=300, cwd=c.dir)
    sanitizer_clean(r.stderr, "facemill label")
    check(r.returncode == 1, "uninterrupted label exits 1 (4 bad inputs), got %d: %s" %
          (r.returncode, r.stderr[-500:].decode("utf-8", "replace")))
    db = c.db
    for attempt in range(2):
        # killed as soon as this run has stored something: a run takes about a
        # second here, and commits come a few hundred rows at a time
        start = c.rows()[0]
        p = subprocess.Popen([fm, "label", inp, "-o", db] + common, cwd=c.dir,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        wait_until(lambda: c.rows()[0] > start or p.poll() is not None, 120,
                   "rows from label run %d before killing it" % (attempt + 1))
        check(p.poll() is None, "label run %d still running at %d rows (%d before it)" %
              (attempt + 1, c.rows()[0], start))
        desc = descendants(p.pid)
        os.kill(p.pid, signal.SIGKILL)  # the label process only: workers must follow
        p.wait(10)
        mid_run(c, 2004, "label killed (-9)")
        # The workers die with label (PR_SET_PDEATHSIG).
        wait_until(lambda: not any(alive(d) for d in desc), 10,
                   "label's worker processes %s to die" % desc)
    r = subprocess.run([fm, "label", inp, "-o", db] + common, capture_output=True,
                       timeout=300, cwd=c.dir)
    sanitizer_clean(r.stderr, "facemill label (resumed)")
    check(r.returncode == 1, "resumed label exits 1, got %d" % r.returncode)
    check(b"already stored" in r.stderr, "resumed label reports stored images")
    exactly_once(c, 2004)
    check(export_without_times(a.bin, db) == export_without_times(a.bin, ref),
          "interrupted + resumed run == uninterrupted run (export compared)")
    r = subprocess.run([fm, "label", inp, "-o", db] + common, capture_output=True,
                       timeout=120, cwd=c.dir)
    check(b"0 committed, 2004 already stored" in r.stderr, "a third run labels nothing")


def free_port_block(n):
    """The first of n consecutive TCP ports free on 127.0.0.1 now."""
    import random
    import socket
    for _ in range(200):
        base = random.randint(20000, 60000 - n)
        socks = []
        try:
            for k in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + k))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise Failure("no %d consecutive free ports on 127.0.0.1" % n)


def case_python(c, a):
    """ops/cluster's secured cluster (keys it made in DIR/keys) on 127.0.0.1: the
    Python example client with the client certificate and the broker's public key,
    then facemill submit and status with DIR/client.yaml; a client without keys is
    never answered."""
    if not os.path.exists(os.path.join(a.pydir, "facemill_pb2.py")):
        raise Skip("no generated facemill_pb2.py in %s (protoc missing?)" % a.pydir)
    try:
        import zmq  # noqa: F401
        import google.protobuf  # noqa: F401
    except ImportError as e:
        raise Skip("%s (install python3-zmq python3-protobuf)" % e)
    inp = os.path.join(c.dir, "in")
    make_images(a.bin, inp, 50)
    cluster = os.path.join(a.src, "ops", "cluster")
    port = free_port_block(4)
    env = dict(os.environ, FACEMILL_BIN=a.bin, FACEMILL_PORT=str(port), FACEMILL_WORKERS="2",
               FACEMILL_WORKER_ARGS="--decode-only")
    env.pop("FACEMILL_CONFIG", None)
    r = subprocess.run([cluster, "start", c.dir], env=env, capture_output=True, timeout=60)
    try:
        check(r.returncode == 0, "ops/cluster start: %s" % r.stderr.decode()[-500:])
        keys = os.path.join(c.dir, "keys")
        client_yaml = os.path.join(c.dir, "client.yaml")
        check(all(os.path.exists(os.path.join(keys, n + ext)) for n in
                  ("broker", "sink", "worker", "client") for ext in (".key", ".key_secret"))
              and os.path.exists(client_yaml),
              "ops/cluster made the four key pairs and client.yaml")
        for log in ("broker", "sink"):
            wait_until(lambda: "CurveZMQ" in read_log(c, log) or
                       "storing results" in read_log(c, log), 60, "the %s serving" % log)
        check("CurveZMQ on every socket" in read_log(c, "broker"), "the broker runs CurveZMQ")
        endpoint = "tcp://127.0.0.1:%d" % port
        script = os.path.join(a.src, "ops", "examples", "submit.py")
        r = subprocess.run([sys.executable, script, "--endpoint", endpoint,
                            "--proto-dir", a.pydir, "--tag", "py",
                            "--cert", os.path.join(keys, "client.key_secret"),
                            "--broker-key", os.path.join(keys, "broker.key"), inp],
                           capture_output=True, timeout=120)
        sys.stdout.write(r.stdout.decode("utf-8", "replace")[-2000:])
        check(r.returncode == 0, "submit.py with the client certificate exits 0: %s" %
              r.stderr.decode()[-1000:])
        check(b"50 committed" in r.stdout, "submit.py saw 50 commits")
        c.db = os.path.join(c.dir, "results.db")
        wait_until(lambda: c.rows()[0] == 50, 10, "50 rows")
        exactly_once(c, 50)
        fm = os.path.join(a.bin, "facemill")
        r = subprocess.run([fm, "submit", "--config", client_yaml, "--tag", "again", "--progress",
                            "none", inp], capture_output=True, timeout=120)
        check(r.returncode == 0, "facemill submit --config DIR/client.yaml exits 0: %s" %
              r.stderr.decode()[-500:])
        st = subprocess.run([fm, "status", "--config", client_yaml, "--tag", "again"],
                            capture_output=True, timeout=30)
        check(st.returncode == 0 and b"50 jobs, 50 committed" in st.stdout,
              "facemill status --config DIR/client.yaml: %s" % st.stdout.decode().strip())
        check(c.rows()[0] == 100, "100 rows (two tags)")
        # Without keys the broker does not even answer: the handshake fails, and the
        # client says why at once instead of timing out.
        st = subprocess.run([fm, "status", "--set", "broker.clients=" + endpoint,
                             "--timeout", "15000"], capture_output=True, timeout=30)
        check(st.returncode == 1 and b"one side has CurveZMQ keys and the other none" in
              st.stderr, "facemill status without keys is told why (%d: %s)" %
              (st.returncode, st.stderr.decode()[-300:]))
    finally:
        subprocess.run([cluster, "stop", c.dir], env=env, capture_output=True, timeout=120)


def case_netns(c, a):
    if os.geteuid() != 0 or not shutil.which("ip"):
        raise Skip("needs root and ip(8)")
    samples = need_pipeline(a, c)
    ns = "fmtest%d" % os.getpid()
    host_if, ns_if = "fmh%d" % (os.getpid() % 100000), "fmn%d" % (os.getpid() % 100000)
    net = 16 + os.getpid() % 200  # 10.250.X.0/30, addresses this test creates
    host_ip, ns_ip = "10.250.%d.1" % net, "10.250.%d.2" % net
    setup = [["ip", "netns", "add", ns],
             ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
             ["ip", "link", "set", ns_if, "netns", ns],
             ["ip", "addr", "add", host_ip + "/30", "dev", host_if],
             ["ip", "link", "set", host_if, "up"],
             ["ip", "netns", "exec", ns, "ip", "addr", "add", ns_ip + "/30", "dev", ns_if],
             ["ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up"],
             ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]]
    try:
        for i, cmd in enumerate(setup):
            r = subprocess.run(cmd, capture_output=True, timeout=20)
            if r.returncode != 0:
                if i == 0:
                    raise Skip("ip netns unavailable: %s" % r.stderr.decode().strip())
                raise Failure("%s: %s" % (" ".join(cmd), r.stderr.decode().strip()))
        import socket
        ports = []
        for _ in range(2):
            s = socket.socket()
            s.bind((host_ip, 0))
            ports.append(s.getsockname()[1])
            s.close()
        tcp = {"broker.workers": "tcp://%s:%d" % (host_ip, ports[0]),
               "sink.results": "tcp://%s:%d" % (host_ip, ports[1])}
        c.sets.update(tcp)
        # Bound to an address another machine (the namespace) reaches: with keys,
        # or the broker and the sink refuse to start.
        c.secure()
        inp = os.path.join(c.dir, "in")
        make_photos(samples, inp, 24)
        for s in samples:
            shutil.copy(s, inp)
        n = 24 + len(samples)
        c.sink()
        c.broker()
        w = c.worker("worker-ns", processes=1, netns=ns, decode_only=False)
        kids = [wait_children(w, 1, 120)]
        p = c.submit([inp], "netns")
        check(finish_submit(c, p, 600) == 0, "submit exits 0 with the worker in %s" % ns)
        exactly_once(c, n)
        # the only worker runs inside the namespace (its processes are listed there)
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                              timeout=20).stdout.split()
        check(len(pids) >= 2 and all(str(k).encode() in pids for k in [w.pid] + kids[0]),
              "the worker's processes %s run in %s: %s" %
              ([w.pid] + kids[0], ns, b" ".join(pids).decode()))
        names = worker_names(c, "worker-ns")
        rows = db_query(c, "SELECT worker, attempt, error_code, n_faces, model FROM images")
        check(len(names) == 1 and all(r[0] == names[0] and r[1] == 1 for r in rows),
              "every job ran once, in %s's pipeline process %s" % (ns, names))
        check(all(r[2] == 0 and r[3] > 0 and "heads" in (r[4] or "") for r in rows),
              "every photo labelled by the full pipeline: %d faces" % sum(r[3] for r in rows))
        same_children(c, [w], kids)
    finally:
        c.stop_all()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def wait_rows(c, n, timeout=120):
    wait_until(lambda: c.rows()[0] >= n, timeout, "%d results" % n)


def case_restart_child(c, a):
    make_images(a.bin, os.path.join(c.dir, "in"), 2000, size=256)
    c.sink()
    c.broker()
    w = c.worker("worker-a", processes=2)
    kids = wait_children(w, 2)
    p = c.submit([os.path.join(c.dir, "in")], "restart", {"client.chunk": "16"})
    wait_rows(c, 300)
    victim = kids[0]
    os.kill(victim, signal.SIGKILL)
    mid_run(c, 2000, "killed pipeline process %d (-9)" % victim)
    fresh = []

    def replaced():
        now = children_of(w.pid)
        fresh[:] = [k for k in now if k not in kids]
        return len(now) == 2 and victim not in now and len(fresh) == 1
    t0 = time.monotonic()
    wait_until(replaced, 30, "a new pipeline process in place of %d" % victim)
    check(True, "new pipeline process %d after %.2f s" % (fresh[0], time.monotonic() - t0))
    check(finish_submit(c, p, 300) == 0, "submit exits 0")
    settle(c)  # late duplicates must not add rows
    exactly_once(c, 2000)
    check(w.poll() is None, "the worker parent (pid %d) still runs" % w.pid)
    check("died (signal 9): restarting" in read_log(c, "worker-a"),
          "the parent logged the death and the restart")
    n_new = db_query(c, "SELECT count(*) FROM images WHERE worker LIKE ?",
                     ("%%:%d/%%" % fresh[0],))[0][0]
    check(n_new > 0, "the new process labelled %d of the jobs" % n_new)


def case_broker_outage(c, a):
    make_images(a.bin, os.path.join(c.dir, "in"), 2000, size=256)
    c.sink()
    broker = c.broker()
    wa = c.worker("worker-a")
    wb = c.worker("worker-b")
    kids = [wait_children(wa, 1), wait_children(wb, 1)]
    p = c.submit([os.path.join(c.dir, "in")], "outage", {"client.chunk": "16"})
    wait_rows(c, 300)
    c.kill9(broker)
    mid_run(c, 2000, "killed the broker (-9)")
    # Down for longer than broker.worker_expiry_ms (1.5 s): both workers notice.
    wait_until(lambda: all("broker silent" in read_log(c, n) for n in ("worker-a", "worker-b")),
               30, "both workers to notice the silent broker")
    # jobs still to label when it comes back, or nothing is left to reconnect for
    at = c.rows()[0]
    check(at < 2000, "both workers noticed the silence; broker restarted at %d of 2000 "
          "rows" % at)
    c.broker()
    check(finish_submit(c, p, 300) == 0, "submit exits 0")
    settle(c)
    exactly_once(c, 2000)
    same_children(c, [wa, wb], kids)
    names = set(worker_names(c, "worker-a") + worker_names(c, "worker-b"))
    by = dict(db_query(c, "SELECT worker, count(*) FROM images GROUP BY worker"))
    check(set(by) <= names and len(names) == 2,
          "every result came from those two processes: %s" % by)


def progress_counts(c, since=0):
    """The done counts of submit's progress lines, those after byte since of its log."""
    with open(os.path.join(c.dir, "submit.log"), "rb") as f:
        f.seek(since)
        text = f.read().decode("utf-8", "replace")
    return [int(x) for x in re.findall(r"^progress: (\d+)/\d+ done", text, re.M)]


def case_no_broker(c, a):
    n = 20
    make_images(a.bin, os.path.join(c.dir, "in"), n, size=64)
    p = c.submit([os.path.join(c.dir, "in")], "no-broker")
    said = "no answer from the broker at "
    wait_until(lambda: said in read_log(c, "submit"), 60,
               "submit to say that no broker answers")
    time.sleep(2.5)  # a few more retries (client.retry_ms): the warning is not repeated
    check(read_log(c, "submit").count(said) == 1, "the warning comes once")
    os.killpg(p.pid, signal.SIGINT)
    check(finish_submit(c, p, 30) == 3, "an interrupted submit exits 3")
    check("the broker never answered, so it holds none of these jobs" in
          read_log(c, "submit"), "the interrupted run says no job reached a broker")
    check("goes on with the jobs it took" not in read_log(c, "submit"),
          "and not that a broker goes on with them")
    c.sink()
    c.broker()
    c.worker()
    p = c.submit([os.path.join(c.dir, "in")], "no-broker")
    check(finish_submit(c, p, 120) == 0, "the same submit, the cluster up: exit 0")
    settle(c)
    exactly_once(c, n)


def case_restart_progress(c, a):
    n = 2000
    make_images(a.bin, os.path.join(c.dir, "in"), n, size=256)
    c.sink()
    broker = c.broker()
    p = c.submit([os.path.join(c.dir, "in")], "restart-progress")
    # No worker yet: the whole run waits at the broker when it stops.
    wait_until(lambda: re.search(r"^tag restart-progress: +%d jobs, 0 committed" % n,
                                 broker_status(c, "restart-progress"), re.M), 60,
               "the broker to hold all %d jobs" % n)
    os.killpg(broker.pid, signal.SIGTERM)
    check(broker.wait(30) == 0, "the broker stops (SIGTERM) holding the run")
    c.broker()  # the same journal: every job is back, none with a client to notify
    w = c.worker("worker-a")
    wait_rows(c, 300)
    os.killpg(w.pid, signal.SIGTERM)  # it finishes or hands back its batch and leaves
    check(w.wait(30) == 0, "worker-a stops")
    mid_run(c, n, "worker-a stopped")
    # Nothing is labelled now: once the count stands still, the progress line shows it.
    stable = []

    def standing():
        stable.append(c.rows()[0])
        return len(stable) >= 20 and stable[-1] == stable[-20]
    wait_until(standing, 60, "the stored count to stand still")
    at = stable[-1]
    since = os.path.getsize(os.path.join(c.dir, "submit.log"))
    try:
        wait_until(lambda: at in progress_counts(c, since), 30,
                   "a progress line saying %d/%d done" % (at, n))
    except Failure as e:
        raise Failure("%s; the lines said %s" % (e, sorted(set(progress_counts(c)))))
    most = max(progress_counts(c))
    check(most == at, "the progress lines counted up to %d of the %d stored" % (most, at))
    c.worker("worker-b")
    check(finish_submit(c, p, 300) == 0, "submit exits 0")
    settle(c)
    exactly_once(c, n)
    check("%d images: %d committed" % (n, n) in read_log(c, "submit"),
          "the summary counts every image committed")


def case_sigterm_worker(c, a):
    make_images(a.bin, os.path.join(c.dir, "in"), 2000, size=256)
    c.sink()
    c.broker()
    wa = c.worker("worker-a", processes=2)
    wb = c.worker("worker-b")
    wait_children(wa, 2)
    kids_b = [wait_children(wb, 1)]
    p = c.submit([os.path.join(c.dir, "in")], "sigterm", {"client.chunk": "16"})
    wait_rows(c, 300)
    names = worker_names(c, "worker-a")
    t0 = time.monotonic()
    os.kill(wa.pid, signal.SIGTERM)  # the parent only, as `kill PID` or a unit would
    mid_run(c, 2000, "SIGTERM to worker-a")
    try:
        rc = wa.wait(20)
    except subprocess.TimeoutExpired:
        raise Failure("worker-a still running 20 s after SIGTERM")
    dt = time.monotonic() - t0
    check(rc == 0 and dt < 10, "worker-a exited %d %.2f s after SIGTERM at %d rows" %
          (rc, dt, c.rows()[0]))
    log = read_log(c, "worker-a")
    back = [int(x) for x in re.findall(r"stopped, (\d+) jobs handed back", log)]
    check(len(back) == 2, "both pipeline processes stopped cleanly, handing back %s jobs" % back)
    check(finish_submit(c, p, 300) == 0, "submit exits 0")
    settle(c)
    exactly_once(c, 2000)
    same_children(c, [wb], kids_b)
    blog = read_log(c, "broker")
    check(all("worker %s left" % n in blog for n in names) and
          not any(re.search(r"worker %s (silent|unreachable|disconnected)" % re.escape(n),
                            blog) for n in names),
          "the broker saw %s leave (WorkerBye), not vanish" % names)
    after = db_query(c, "SELECT count(*) FROM images WHERE worker NOT IN (%s)" %
                     ",".join("?" * len(names)), tuple(names))[0][0]
    check(after > 0, "worker-b labelled %d jobs" % after)


def case_worker_name(c, a):
    make_images(a.bin, os.path.join(c.dir, "in"), 40)
    c.sink()
    c.broker()
    c.worker("worker-a", processes=2)
    c.worker("worker-b", overrides={"worker.name": "box7"})
    wait_until(lambda: read_log(c, "broker").count(" ready, credit ") == 3, 60,
               "3 worker processes ready at the broker")
    p = c.submit([os.path.join(c.dir, "in")], "names")
    # status while the workers run: they are listed by name
    st = subprocess.run([os.path.join(a.bin, "facemill"), "status"] + c.args(),
                        capture_output=True, timeout=30).stdout.decode()
    check(finish_submit(c, p, 120) == 0, "submit exits 0")
    exactly_once(c, 40)
    names = worker_names(c, "worker-a") + worker_names(c, "worker-b")
    host = os.uname().nodename
    check(len(names) == 3 and sum(n.startswith("box7:") for n in names) == 1 and
          sum(n.startswith(host + ":") for n in names) == 2,
          "names: host:pid/index, and worker.name for worker-b: %s" % names)
    check(all(n in st for n in names), "status lists %s" % names)
    rows = db_query(c, "SELECT worker FROM images")
    check(all(r[0] in names for r in rows), "every result row names its process")
    out = subprocess.run([os.path.join(a.bin, "facemill"), "export", "--times", c.db],
                         check=True, capture_output=True, timeout=60).stdout.decode()
    objs = [json.loads(x) for x in out.splitlines()]
    check(len(objs) == 40 and all(o.get("worker") in names for o in objs),
          "export --times carries the worker of every image")
    csv = subprocess.run([os.path.join(a.bin, "facemill"), "export", "--format", "csv",
                          "--times", c.db], check=True, capture_output=True,
                         timeout=60).stdout.decode().splitlines()
    head = csv[0].split(",")
    k = head.index("worker") if "worker" in head else -1
    check(k >= 0 and all(line.split(",")[k] in names for line in csv[1:]),
          "export --format csv --times has a worker column")


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        kids = children_of(todo.pop())
        out += kids
        todo += kids
    return out


def case_label_orphans(c, a):
    inp = os.path.join(c.dir, "in")
    fm = os.path.join(a.bin, "facemill")
    samples = pipeline_samples(a)
    if samples:
        # The real pipeline: each process is in the middle of a batch of seconds
        # when label dies, which is when lingering used to show.
        os.makedirs(inp)
        for k in range(4):
            for s in samples:
                shutil.copy(s, os.path.join(inp, "%d_%s" % (k, os.path.basename(s))))
        extra, first, total = [], 1, 4 * len(samples)
    else:
        make_images(a.bin, inp, 2000, size=256)
        extra, first, total = ["--worker-arg", "--decode-only", "--set",
                               "client.chunk=16"], 200, 2000
    p = subprocess.Popen([fm, "label", inp, "-o", c.db, "--progress", "none", "-j", "2",
                          "--set", "log.level=warn"] + extra, cwd=c.dir,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    desc = []
    try:
        def three():
            desc[:] = descendants(p.pid)
            return len(desc) == 3
        wait_until(three, 60, "label's worker parent and its 2 pipeline processes")
        wait_until(lambda: c.rows()[0] >= first or p.poll() is not None, 300,
                   "%d rows before killing label" % first)
        check(p.poll() is None, "label (%s) still running at %d rows" %
              ("full pipeline" if samples else "decode-only", c.rows()[0]))
        desc = descendants(p.pid)
        os.kill(p.pid, signal.SIGKILL)
        t0 = time.monotonic()
        p.wait(10)
        mid_run(c, total, "label killed (-9)")
        wait_until(lambda: not any(alive(d) for d in desc), 3.0,
                   "label's worker processes %s to die" % desc)
        check(True, "all %d worker processes gone %.3f s after kill -9 of label" %
              (len(desc), time.monotonic() - t0))
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        for d in desc:  # whatever outlived label (a failed run) must not linger
            if alive(d):
                os.kill(d, signal.SIGKILL)
        # the run directory a killed label leaves (the next label run would remove it)
        tmp = os.environ.get("TMPDIR", "")
        bases = {"/tmp", tmp} if tmp.startswith("/") else {"/tmp"}
        for f in [f for b in bases for f in glob.glob(b + "/facemill-label.*/pid")]:
            try:
                with open(f) as fh:
                    mine = fh.read().strip() == str(p.pid)
            except OSError:
                continue
            if mine:
                shutil.rmtree(os.path.dirname(f), ignore_errors=True)
    if not samples:
        raise Skip("checked with decode-only workers only: models/cache has no sample "
                   "photos (run models/fetch)")


def pipeline_samples(a):
    """The sample photos models/fetch stores with the models it fetches (their
    presence says it ran), or []."""
    d = os.path.join(a.src, "models", "cache", "samples")
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".jpg"))


def need_pipeline(a, c):
    """The sample photos, for a case that runs real workers with the shipped defaults:
    no model setting, so they find the fetched models on their own (skip when
    models/fetch has not run). c's processes may hold a job as long as a slow machine
    needs for a batch."""
    samples = pipeline_samples(a)
    if not samples:
        raise Skip("models/cache has no sample photos (run models/fetch)")
    c.sets["broker.job_timeout_ms"] = "300000"
    return samples


def make_photos(samples, outdir, n):
    """n photos of faces for cases that need many real jobs: the samples scaled to
    288..464 pixels wide, some mirrored, every one different (~100-150 ms each on
    the full pipeline, where a 1920x1280 sample takes ~700 ms)."""
    try:
        from PIL import Image
    except ImportError:
        raise Skip("python3-pil is needed to make photos from the samples")
    os.makedirs(outdir, exist_ok=True)
    base = []
    for s in samples:
        im = Image.open(s)
        im.draft("RGB", (im.width // 4, im.height // 4))  # decode at a quarter
        base.append(im.convert("RGB"))
    for k in range(n):
        im, v = base[k % len(base)], k // len(base)
        w = 288 + 16 * (v % 12)
        out = im.resize((w, im.height * w // im.width), Image.BILINEAR)
        if v // 12 % 2:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        out.save(os.path.join(outdir, "photo%04d.jpg" % k), quality=85 + v // 24 % 10)


def close(x, y, tol):
    return abs(x - y) <= tol


def near(u, v, rel=1e-5, ab=1e-7):
    """Equal up to float rounding: predict and export print the same float32 values
    (shortest round-trip form), and the service may batch faces differently."""
    return abs(u - v) <= ab + rel * max(abs(u), abs(v))


RACES = ("White", "Black", "Asian", "Indian", "Others")


def same_face(e, p):
    """An exported face (e) against predict's (p): the fields that differ, or []."""
    return face_diff(e, p, 1e-5)


def predict(a, c, paths, timeout):
    """`facemill predict` on paths (c's settings: no model setting among them):
    basename -> its JSON object. In a session of its own, as c's processes run: the
    same share of a busy machine (sched_autogroup) as a worker gets."""
    r = subprocess.run([os.path.join(a.bin, "facemill"), "predict"] + c.args() + paths,
                       capture_output=True, timeout=timeout, cwd=c.dir,
                       start_new_session=True)
    sanitizer_clean(r.stderr, "facemill predict")
    check(r.returncode == 0, "facemill predict on %d photos: %s" %
          (len(paths), r.stderr.decode("utf-8", "replace")[-500:]))
    out = {}
    for line in r.stdout.decode().splitlines():
        o = json.loads(line)
        out[os.path.basename(o["source"])] = o
    return out


def case_full_pipeline(c, a):
    samples = need_pipeline(a, c)
    inp = os.path.join(c.dir, "in")
    os.makedirs(inp)
    for s in samples:
        shutil.copy(s, inp)
    # What one process computes for the same photos with the same settings; run
    # alongside the service to keep the test short on slow (sanitizer) builds.
    ref = subprocess.Popen([os.path.join(a.bin, "facemill"), "predict"] + c.args() +
                           [os.path.join(inp, os.path.basename(s)) for s in samples],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=c.dir)
    try:
        c.sink()
        c.broker()
        w = c.worker("worker", processes=2, decode_only=False)
        t0 = time.monotonic()
        p = c.submit([inp], "full")
        check(finish_submit(c, p, 600) == 0, "submit exits 0")
        check(True, "%d photos labelled in %.1f s" % (len(samples), time.monotonic() - t0))
        ref_out, ref_err = ref.communicate(timeout=600)
    finally:
        if ref.poll() is None:
            ref.kill()
            ref.wait(10)
    sanitizer_clean(ref_err, "facemill predict")
    check(ref.returncode == 0, "facemill predict on the samples")
    want = {}
    for line in ref_out.decode().splitlines():
        o = json.loads(line)
        want[os.path.basename(o["source"])] = o
    exactly_once(c, len(samples))
    check(w.poll() is None, "the worker still runs")
    out = subprocess.run([os.path.join(a.bin, "facemill"), "export", c.db], check=True,
                         capture_output=True, timeout=60).stdout.decode()
    objs = [json.loads(x) for x in out.splitlines()]
    check(len(objs) == len(samples) and
          all(o["schema"] == 2 and o["error"] is None for o in objs),
          "export: %d images, no errors" % len(objs))
    total = 0
    for o in objs:
        name = os.path.basename(o["source"])
        faces, ref_faces = o["faces"], want[name]["faces"]
        total += len(faces)
        check(len(faces) == len(ref_faces) and faces and
              (o["width"], o["height"]) == (want[name]["width"], want[name]["height"]),
              "%s: %dx%d, %d faces (predict: %dx%d, %d)" %
              (name, o["width"], o["height"], len(faces), want[name]["width"],
               want[name]["height"], len(ref_faces)))
        check(o["model"] and "heads" in o["model"] and len(o["sha256"]) == 64,
              "%s: labelled by %s" % (name, o["model"]))
        for i, (f, r) in enumerate(zip(faces, ref_faces)):
            b = f["box"]
            gp, rp = f["gender_probs"], f["race_probs"]
            probs = list(gp.values()) + list(rp.values())
            ok = (0 <= b["x1"] < b["x2"] <= o["width"] + 1 and
                  0 <= b["y1"] < b["y2"] <= o["height"] + 1 and
                  0 < f["score"] <= 1 and 0 <= f["age"] <= 116 and f["age_std"] >= 0 and
                  sorted(gp) == ["female", "male"] and sorted(rp) == sorted(RACES) and
                  len(f["landmarks"]) == 5 and
                  close(sum(gp.values()), 1, 1e-3) and close(sum(rp.values()), 1, 1e-3) and
                  all(0 <= q <= 1 for q in probs) and
                  f["gender"] in ("male", "female") and
                  f["race"] in RACES)
            if not ok:
                raise Failure("%s: implausible face %s" % (name, f))
            diff = same_face(f, r)
            if diff:
                raise Failure("%s face %d: %s differ: service %s, predict %s" %
                              (name, i, ", ".join(diff), f, r))
    check(total > 0, "%d faces: box, score, landmarks, age, age_std, gender, race and "
          "their probabilities equal to predict's (relative 1e-5)" % total)


def case_long_batch(c, a):
    samples = need_pipeline(a, c)
    inp = os.path.join(c.dir, "in")
    os.makedirs(inp)
    for s in samples:
        shutil.copy(s, inp)
    n = len(samples)
    # Every pyramid level down to detect.min_face, levels closer together: several
    # times the detector's default work. On a fast CPU a default photo takes under
    # 100 ms, and an expiry of a third of that (about 30 ms) was outlasted by the
    # scheduling of two busy cores, not by a long batch.
    c.sets["detect.min_face_frac"] = "0"
    c.sets["detect.scale_factor"] = "0.85"
    # The expiry comes from this machine's speed: a third of the fastest photo's time
    # on the full pipeline, and at least 60 ms. Every batch holds at least one photo,
    # so every batch outlasts the expiry about three times (or more: up to
    # worker.credit photos).
    ref = predict(a, c, [os.path.join(inp, os.path.basename(s)) for s in samples], 600)
    per_photo = sorted(sum(o["times_ms"].values()) for o in ref.values())
    expiry = max(60, int(per_photo[0] / 3))
    heartbeat = max(10, expiry // 8)
    c.sets["broker.heartbeat_ms"] = str(heartbeat)
    c.sets["broker.worker_expiry_ms"] = str(expiry)
    # No disk syncs in the broker's loop: on a busy disk one can outlast so short an
    # expiry, and durability is not what this case is about.
    c.sets["broker.fsync"] = "off"
    check(True, "photos take %d..%d ms: worker expiry %d ms, heartbeat %d ms" %
          (per_photo[0], per_photo[-1], expiry, heartbeat))
    c.sink()
    c.broker()
    # The worker starts once the broker serves: its silence timer (the short expiry)
    # would otherwise run while a loaded machine is still starting the broker.
    wait_until(lambda: "broker: clients" in read_log(c, "broker") and
               "storing results" in read_log(c, "sink"), 120, "the broker and sink serving")
    w = c.worker("worker", processes=1, decode_only=False, overrides={"log.level": "debug"})
    kids = [wait_children(w, 1, 120)]
    p = c.submit([inp], "long")
    # While the worker is busy on a batch, the broker keeps hearing from it.
    heard = []
    deadline = time.monotonic() + 600
    while p.poll() is None and time.monotonic() < deadline:
        m = re.search(r" busy ([1-9]\d*), heard (\d+) ms ago", broker_status(c))
        if m:
            heard.append(int(m.group(2)))
        time.sleep(0.05)
    check(finish_submit(c, p, 600) == 0, "submit exits 0")
    exactly_once(c, n)
    ms = [int(x) for x in re.findall(r"batch of \d+: (\d+) ms", read_log(c, "worker"))]
    check(ms and min(ms) > expiry, "batches took %s ms, every one longer than the %d ms "
          "expiry" % (ms, expiry))
    check(heard and max(heard) < expiry, "during the batches the broker last heard from "
          "the worker %s ms before (%d looks)" % (
              "%d..%d" % (min(heard), max(heard)) if heard else "?", len(heard)))
    blog = read_log(c, "broker")
    check("silent" not in blog and "re-queued" not in blog and "dropped" not in blog,
          "the broker never took the worker for dead nor re-queued a job")
    check("broker silent" not in read_log(c, "worker"),
          "the worker heard the broker's heartbeats throughout")
    attempts = db_query(c, "SELECT attempt, count(*) FROM images GROUP BY attempt")
    check(attempts == [(1, n)], "every job ran once (attempts %s)" % attempts)
    same_children(c, [w], kids)


CASES = {
    "flow": case_flow,
    "kill_worker": case_kill_worker,
    "kill_broker": case_kill_broker,
    "kill_sink": case_kill_sink,
    "bad_inputs": case_bad_inputs,
    "label": case_label,
    "python": case_python,
    "slowdown": case_slowdown,
    "inputs": case_inputs,
    "netns": case_netns,
    "restart_child": case_restart_child,
    "broker_outage": case_broker_outage,
    "no_broker": case_no_broker,
    "restart_progress": case_restart_progress,
    "sigterm_worker": case_sigterm_worker,
    "worker_name": case_worker_name,
    "label_orphans": case_label_orphans,
    "full_pipeline": case_full_pipeline,
    "long_batch": case_long_batch,
}


def case_args(cases):
    """The command line of a program of cluster cases: --case NAME (one of cases),
    --bin, --src (absolute), --pydir (default BIN/../python), --keep."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True, choices=sorted(cases))
    ap.add_argument("--bin", default=os.environ.get("FACEMILL_BIN_DIR", "build/bin"))
    ap.add_argument("--src", default=os.environ.get("FACEMILL_SOURCE_DIR", "."))
    ap.add_argument("--pydir", default=None, help="generated facemill_pb2.py directory")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)
    a.src = os.path.abspath(a.src)
    if a.pydir is None:
        a.pydir = os.path.join(os.path.dirname(a.bin), "python")
    return a


def run_case(c, body, keep=False, cleanup=None):
    """Runs body() against the cluster c and returns the exit code: 0 passed, SKIP
    (body raised Skip; what ran before must still be clean), 1 failed (a Failure, or a
    sanitizer report in any program's log once every process stopped). Then stops
    everything, calls cleanup() when given, and removes c.dir unless keep or a
    failure (the logs are dumped and the directory kept)."""
    code = 1
    try:
        result = 0
        try:
            body()
        except Skip as e:
            print("skip:", e, flush=True)
            result = SKIP
        c.stop_all()
        for name in sorted(os.listdir(c.dir)):
            if name.endswith(".log"):
                with open(os.path.join(c.dir, name), "rb") as f:
                    sanitizer_clean(f.read(), name)
        code = result
    except Failure as e:
        print("FAIL:", e, flush=True)
        c.dump_logs()
    finally:
        c.stop_all()
        if cleanup:
            cleanup()
        if code in (0, SKIP) and not keep:
            shutil.rmtree(c.dir, ignore_errors=True)
        else:
            print("files kept in", c.dir)
    return code


def main():
    a = case_args(CASES)
    for prog in ("facemill", "facemill-broker", "facemill-sink", "facemill-worker"):
        if not os.access(os.path.join(a.bin, prog), os.X_OK):
            print("skip: %s not built" % prog)
            return SKIP
    tmp = tempfile.mkdtemp(prefix="fmsvc.", dir="/tmp")  # short: ipc paths are limited
    c = Cluster(a.bin, a.src, tmp)
    code = run_case(c, lambda: CASES[a.case](c, a), a.keep)
    print("test_service %s: %s" % (a.case, {0: "passed", SKIP: "skipped"}.get(code, "FAILED")))
    return code


if __name__ == "__main__":
    sys.exit(main())
