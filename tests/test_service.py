#!/usr/bin/env python3
"""test_service.py - the service end to end with real processes: facemill-broker,
facemill-sink, facemill-worker (--decode-only: no models needed) and facemill
submit/label/export, on ipc:// endpoints in a temporary directory (the network
namespace case uses addresses it creates on a veth pair it creates).

One case per run (--case NAME), so ctest reports each on its own:
  flow        2,000 generated jobs, broker + 2 worker processes + sink: every job
              committed exactly once; export has one line per image
  kill_worker kill -9 of a worker mid-run: nothing lost, nothing duplicated
  kill_broker kill -9 of the broker mid-run and a restart from its journal
  kill_sink   kill -9 of the sink mid-run and a restart
  slowdown    a broker queue bound of 8: the client honours SlowDown, nothing lost
  inputs      tar.gz and zip archives and a file list on stdin; --by-path
  bad_inputs  corrupt, truncated and non-JPEG inputs: error rows with reasons, the
              workers still alive; submit exits 1
  label       `facemill label` killed (-9) mid-run and rerun: the same database
              contents as an uninterrupted run
  python      ops/examples/submit.py against a real broker
  netns       a worker in another network namespace labels jobs of a broker in the
              host namespace (root and `ip netns` needed; exit 77 otherwise)

Every wait is bounded. Exit 0 pass, 1 fail, 77 skip.
"""
import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

SKIP = 77


class Failure(Exception):
    pass


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

    def args(self, overrides=None):
        sets = dict(self.sets)
        sets.update(overrides or {})
        out = []
        for k, v in sets.items():
            out += ["--set", "%s=%s" % (k, v)]
        return out

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
                          self.args(overrides))

    def sink(self, overrides=None):
        return self.start("sink", [os.path.join(self.bin, "facemill-sink")] +
                          self.args(overrides))

    def worker(self, name="worker", processes=1, overrides=None, netns=None):
        return self.start(name, [os.path.join(self.bin, "facemill-worker"), "--processes",
                                 str(processes), "--decode-only"] + self.args(overrides),
                          netns=netns)

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
    make_images(a.bin, os.path.join(c.dir, "in"), 2000, size=256)
    sink = c.sink()
    broker = c.broker()
    w1 = c.worker("worker-a")
    c.worker("worker-b")
    p = c.submit([os.path.join(c.dir, "in")], "kill",
                 {"client.chunk": "16"})
    wait_until(lambda: c.rows()[0] >= 300, 120, "300 results before the kill")
    if victim == "worker":
        c.kill9(w1)
        check(True, "killed worker-a (-9) at %d rows" % c.rows()[0])
    elif victim == "broker":
        c.kill9(broker)
        check(True, "killed the broker (-9) at %d rows" % c.rows()[0])
        time.sleep(1.0)
        c.broker()
    else:
        c.kill9(sink)
        check(True, "killed the sink (-9) at %d rows" % c.rows()[0])
        time.sleep(1.0)
        c.sink()
    rc = finish_submit(c, p, 300)
    check(rc == 0, "submit exits 0 (got %d)" % rc)
    # Late duplicates (re-dispatched jobs) may still arrive: they must not add rows.
    time.sleep(1.0)
    exactly_once(c, 2000)


def case_kill_worker(c, a):
    kill_case(c, a, "worker")


def case_kill_broker(c, a):
    kill_case(c, a, "broker")


def case_kill_sink(c, a):
    kill_case(c, a, "sink")


def case_bad_inputs(c, a):
    make_images(a.bin, os.path.join(c.dir, "in"), 20, bad=True)
    c.sink()
    c.broker()
    w = c.worker("worker", processes=2)
    p = c.submit([os.path.join(c.dir, "in")], "bad")
    check(finish_submit(c, p, 120) == 1, "submit exits 1: some images failed")
    images, distinct, failed = c.rows()
    check(images == 24 and distinct == 24 and failed == 4, "24 rows, 4 of them errors")
    con = sqlite3.connect("file:%s?mode=ro" % c.db, uri=True)
    rows = dict(con.execute("SELECT source, error_code || ' ' || error_text FROM images"
                            " WHERE error_code != 0").fetchall())
    con.close()
    for name in ("bad_corrupt.jpg", "bad_truncated.jpg", "bad_format.png", "bad_text.jpg"):
        key = os.path.join(c.dir, "in", name)
        check(key in rows and len(rows[key]) > 4, "%s: error row '%s'" % (name, rows.get(key)))
    check("PNG" in rows[os.path.join(c.dir, "in", "bad_format.png")], "the PNG is named")
    check(w.poll() is None, "the worker is still running")
    # and it still labels: submit the good images again under a new tag
    p = c.submit([os.path.join(c.dir, "in", "img000001.jpg")], "after-bad")
    check(finish_submit(c, p, 60) == 0, "the worker labels after the bad inputs")


def case_slowdown(c, a):
    make_images(a.bin, os.path.join(c.dir, "in"), 300)
    c.sink()
    c.broker({"broker.max_queue": "8"})
    # No worker yet: the queue must fill to its bound, so SlowDown is certain to be
    # sent whatever the machine's speed; workers then drain it.
    p = c.submit([os.path.join(c.dir, "in")], "slow", {"client.chunk": "4"})
    time.sleep(1.0)
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
        p = subprocess.Popen([fm, "label", inp, "-o", db] + common, cwd=c.dir,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        target = 500 * (attempt + 1)
        wait_until(lambda: c.rows()[0] >= target or p.poll() is not None, 120,
                   "%d rows before killing label" % target)
        os.kill(p.pid, signal.SIGKILL)  # the label process only: workers must follow
        p.wait(10)
        check(True, "label killed (-9) at %d rows" % c.rows()[0])
    # The workers die with label (PR_SET_PDEATHSIG): none left after a moment.
    time.sleep(1.0)
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


def case_python(c, a):
    inp = os.path.join(c.dir, "in")
    make_images(a.bin, inp, 50)
    c.sink()
    c.broker()
    c.worker("worker", processes=2)
    if not os.path.exists(os.path.join(a.pydir, "facemill_pb2.py")):
        print("skip: no generated facemill_pb2.py in %s (protoc missing?)" % a.pydir)
        sys.exit(SKIP)
    try:
        import zmq  # noqa: F401
        import google.protobuf  # noqa: F401
    except ImportError as e:
        print("skip: %s (install python3-zmq python3-protobuf)" % e)
        sys.exit(SKIP)
    script = os.path.join(a.src, "ops", "examples", "submit.py")
    r = subprocess.run([sys.executable, script, "--endpoint", c.endpoints["broker.clients"],
                        "--proto-dir", a.pydir, "--tag", "py", inp],
                       capture_output=True, timeout=120)
    sys.stdout.write(r.stdout.decode("utf-8", "replace")[-2000:])
    check(r.returncode == 0, "submit.py exits 0: %s" % r.stderr.decode()[-1000:])
    check(b"50 committed" in r.stdout, "submit.py saw 50 commits")
    wait_until(lambda: c.rows()[0] == 50, 10, "50 rows")
    exactly_once(c, 50)


def case_netns(c, a):
    if os.geteuid() != 0 or not shutil.which("ip"):
        print("skip: needs root and ip(8)")
        sys.exit(SKIP)
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
                    print("skip: ip netns unavailable: %s" % r.stderr.decode().strip())
                    sys.exit(SKIP)
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
        inp = os.path.join(c.dir, "in")
        make_images(a.bin, inp, 100)
        c.sink()
        c.broker()
        c.worker("worker-ns", processes=1, netns=ns)
        p = c.submit([inp], "netns")
        check(finish_submit(c, p, 120) == 0, "submit exits 0 with the worker in %s" % ns)
        exactly_once(c, 100)
        # the only worker runs inside the namespace (its processes are listed there)
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                              timeout=20).stdout.split()
        check(len(pids) >= 2, "the worker's processes run in %s: %s" %
              (ns, b" ".join(pids).decode()))
    finally:
        c.stop_all()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


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
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True, choices=sorted(CASES))
    ap.add_argument("--bin", default=os.environ.get("FACEMILL_BIN_DIR", "build/bin"))
    ap.add_argument("--src", default=os.environ.get("FACEMILL_SOURCE_DIR", "."))
    ap.add_argument("--pydir", default=None, help="generated facemill_pb2.py directory")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)
    a.src = os.path.abspath(a.src)
    if a.pydir is None:
        a.pydir = os.path.join(os.path.dirname(a.bin), "python")
    for prog in ("facemill", "facemill-broker", "facemill-sink", "facemill-worker"):
        if not os.access(os.path.join(a.bin, prog), os.X_OK):
            print("skip: %s not built" % prog)
            return SKIP
    tmp = tempfile.mkdtemp(prefix="fmsvc.", dir="/tmp")  # short: ipc paths are limited
    c = Cluster(a.bin, a.src, tmp)
    code = 1
    try:
        CASES[a.case](c, a)
        c.stop_all()
        for name in sorted(os.listdir(tmp)):
            if name.endswith(".log"):
                with open(os.path.join(tmp, name), "rb") as f:
                    sanitizer_clean(f.read(), name)
        code = 0
    except Failure as e:
        print("FAIL:", e, flush=True)
        c.dump_logs()
    finally:
        c.stop_all()
        if code == 0 and not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("files kept in", tmp)
    print("test_service %s: %s" % (a.case, "passed" if code == 0 else "FAILED"))
    return code


if __name__ == "__main__":
    sys.exit(main())
