#!/usr/bin/env python3
"""test_systemd.py - facemill-broker, facemill-sink and facemill-worker as systemd
runs them (Type=notify units, ops/systemd/), with real processes on ipc:// endpoints
in a temporary directory, the way tests/test_service.py runs them.

systemd's side is played by this test: it binds the Unix datagram socket it names in
NOTIFY_SOCKET, sets WATCHDOG_USEC=2000000 (a ping expected about every second; no
WATCHDOG_PID, which sd_watchdog_enabled accepts) and reads what the program sends,
with the sender's pid (SCM_CREDENTIALS).

One case per run (--case NAME), so ctest reports each on its own:
  broker, sink, worker
        the program under test notified (the other two plain), with log.file set:
        READY=1 arrives; STATUS= lines arrive and follow 20 submitted jobs to the
        end; WATCHDOG=1 keeps coming about once a second (never a gap near the 2 s
        limit); every message comes from the main pid (NotifyAccess=main: a worker's
        pipeline processes never notify); log.file gets the lines, and after the file
        is renamed, SIGHUP makes the program (every worker process too) write to a
        new file at the same path while it keeps serving; SIGTERM stops it with exit
        0 after STOPPING=1. Then started again without log.file: SIGHUP changes
        nothing, it goes on pinging the watchdog, SIGTERM exits 0.
  plain without NOTIFY_SOCKET (outside systemd): the three programs label 20 jobs
        as before, say nothing about systemd, survive SIGHUP without log.file and
        exit 0 on SIGTERM.
  verify `systemd-analyze verify` on the units cmake generated (BUILD/systemd/),
        which must also start the programs from the install's bin directory (exit
        77 without systemd-analyze).

Every wait is bounded and waits for a condition. Exit 0 pass, 1 fail, 77 skip.
"""
import argparse
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

SKIP = 77
WATCHDOG_USEC = 2000000
PROGRAMS = ("broker", "sink", "worker")
# Variables systemd sets; the test decides which a program sees.
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
               "LISTEN_PID", "INVOCATION_ID")
SANITIZER_MARKS = (b"AddressSanitizer", b"LeakSanitizer", b"runtime error:")


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


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(")") + 2] not in ("Z", "X")


def children_of(pid):
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


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


class Listener:
    """The notification socket: every line received, with its time and sender pid."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.msgs = []  # (monotonic time, pid, "KEY=value")
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        space = socket.CMSG_SPACE(struct.calcsize("iII"))
        while not self.done.is_set():
            r, _, _ = select.select([self.sock], [], [], 0.1)
            if not r:
                continue
            data, anc, _, _ = self.sock.recvmsg(4096, space)
            t = time.monotonic()
            pid = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:struct.calcsize("iII")])[0]
            with self.lock:
                for line in data.decode("utf-8", "replace").split("\n"):
                    if line:
                        self.msgs.append((t, pid, line))

    def close(self):
        self.done.set()
        self.thread.join(5)
        self.sock.close()

    def lines(self, key=None, since=0.0):
        with self.lock:
            return [(t, pid, line) for t, pid, line in self.msgs
                    if t >= since and (key is None or line.startswith(key + "="))]

    def wait(self, key, timeout, what, since=0.0, count=1, pred=None):
        """Waits for count lines KEY=... received after since (matching pred)."""
        def enough():
            got = [x for x in self.lines(key, since) if pred is None or pred(x[2])]
            return len(got) >= count
        wait_until(enough, timeout, what)
        return self.lines(key, since)


class Cluster:
    """A broker, a sink and a worker on ipc:// endpoints in one temporary directory."""

    def __init__(self, bindir, tmp):
        self.bin = bindir
        self.dir = tmp
        self.db = os.path.join(tmp, "results.db")
        self.procs = []
        self.sets = {
            "broker.clients": "ipc://%s/clients" % tmp,
            "broker.workers": "ipc://%s/workers" % tmp,
            "sink.commits": "ipc://%s/commits" % tmp,
            "sink.results": "ipc://%s/results" % tmp,
            "broker.journal": os.path.join(tmp, "journal.db"),
            "sink.db": self.db,
            "broker.heartbeat_ms": "200",
            "broker.worker_expiry_ms": "1500",
            "client.retry_ms": "2000",
            "log.level": "info",
        }

    def args(self, overrides=None):
        sets = dict(self.sets)
        sets.update(overrides or {})
        out = []
        for k, v in sets.items():
            out += ["--set", "%s=%s" % (k, v)]
        return out

    def argv(self, prog, overrides=None):
        extra = ["--processes", "2", "--decode-only"] if prog == "worker" else []
        return [os.path.join(self.bin, "facemill-" + prog)] + extra + self.args(overrides)

    def start(self, name, argv, notify=None):
        """Starts argv with its output in NAME.out; notify=Listener path or None."""
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}
        if notify:
            env["NOTIFY_SOCKET"] = notify
            env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
        out = open(os.path.join(self.dir, name + ".out"), "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True, cwd=self.dir)
        out.close()
        p.fm_name = name
        self.procs.append(p)
        return p

    def submit(self, indir, tag):
        p = self.start("submit", [os.path.join(self.bin, "facemill"), "submit", "--tag", tag,
                                  "--progress", "lines"] + self.args() + [indir])
        try:
            return p.wait(120)
        except subprocess.TimeoutExpired:
            raise Failure("facemill submit did not finish within 120 s")

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

    def check_outputs(self):
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".out") or ".log" in name:
                with open(os.path.join(self.dir, name), "rb") as f:
                    data = f.read()
                for m in SANITIZER_MARKS:
                    if m in data:
                        raise Failure("%s: sanitizer report (%s)" % (name, m.decode()))

    def dump(self):
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".out") or ".log" in name:
                data = read(os.path.join(self.dir, name))[-3000:]
                sys.stderr.write("---- %s (tail)\n%s\n" % (name, data))


def make_images(bindir, outdir, n):
    tool = os.path.join(os.path.dirname(bindir.rstrip("/")), "tests", "make_images")
    if not os.access(tool, os.X_OK):
        raise Failure("%s not built" % tool)
    os.makedirs(outdir, exist_ok=True)
    r = subprocess.run([tool, outdir, str(n), "--size", "48"], timeout=120)
    if r.returncode != 0:
        raise Failure("make_images exited %d" % r.returncode)


def stop(p, timeout=30):
    os.kill(p.pid, signal.SIGTERM)
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        raise Failure("%s did not stop within %gs of SIGTERM" % (p.fm_name, timeout))


def check_watchdog(lst, prog, since):
    """WATCHDOG=1 keeps coming at about half of WATCHDOG_USEC."""
    lst.wait("WATCHDOG", 15, "%s: 5 watchdog pings" % prog, since=since, count=5)
    times = [t for t, _, _ in lst.lines("WATCHDOG", since)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    half = WATCHDOG_USEC / 2e6
    mean = sum(gaps) / len(gaps)
    check(0.8 * half <= mean <= 1.4 * half,
          "%s: watchdog every %.2f s on average (half of %g s)" %
          (prog, mean, WATCHDOG_USEC / 1e6))
    check(max(gaps) < 0.9 * WATCHDOG_USEC / 1e6,
          "%s: longest gap between pings %.2f s, well inside the %g s limit" %
          (prog, max(gaps), WATCHDOG_USEC / 1e6))


# What each program's STATUS= says once the 20 jobs are through.
FINAL_STATUS = {
    "broker": re.compile(r"\b20 committed\b"),
    "sink": re.compile(r"^20 results stored\b"),
    "worker": re.compile(r"\b20 images done\b"),
}


def case_program(c, a, prog):
    make_images(a.bin, os.path.join(c.dir, "in"), 20)
    lst = Listener(os.path.join(c.dir, "notify-" + prog))
    try:
        others = [x for x in PROGRAMS if x != prog]
        for o in others:
            c.start(o, c.argv(o))
        logfile = os.path.join(c.dir, prog + ".log")
        t0 = time.monotonic()
        p = c.start(prog, c.argv(prog, {"log.file": logfile}), notify=lst.path)

        # READY=1 and the first STATUS=, from the main process only
        lst.wait("READY", 60, "%s: READY=1" % prog)
        ready = lst.lines("READY")
        check(len(ready) == 1 and ready[0][1] == p.pid,
              "%s: READY=1 once, from its main pid %d" % (prog, p.pid))
        if prog == "worker":
            kids = children_of(p.pid)
            check(len(kids) == 2, "worker: 2 pipeline processes running at READY=1")
        lst.wait("STATUS", 10, "%s: a STATUS= line" % prog)
        check(True, "%s: STATUS=%s" % (prog, lst.lines("STATUS")[0][2][7:]))

        # the work goes through, and the status follows it
        check(c.submit(os.path.join(c.dir, "in"), "sd") == 0, "submit of 20 jobs exits 0")
        lst.wait("STATUS", 15, "%s: STATUS= reporting the 20 jobs" % prog,
                 pred=lambda line: FINAL_STATUS[prog].search(line[7:]))
        check(True, "%s: STATUS=%s" % (prog, lst.lines("STATUS")[-1][2][7:]))
        check_watchdog(lst, prog, t0)

        # log.file, then logrotate's way: rename, SIGHUP, a new file at the same path
        wait_until(lambda: read(logfile).count("\n") >= 1, 10, "lines in %s" % logfile)
        check(True, "%s: log.file has %d lines" % (prog, read(logfile).count("\n")))
        out = read(os.path.join(c.dir, prog + ".out"))
        check("INFO" not in out, "%s: nothing logged on stderr with log.file set" % prog)
        rotated = logfile + ".1"
        os.rename(logfile, rotated)
        kids = children_of(p.pid)
        t_hup = time.monotonic()
        os.kill(p.pid, signal.SIGHUP)
        wait_until(lambda: "reopened" in read(logfile), 10,
                   "%s: a new %s after SIGHUP" % (prog, logfile))
        check(p.poll() is None, "%s: still running after SIGHUP" % prog)
        if prog == "worker":
            # every pipeline process reopened the file too, and none was restarted
            wait_until(lambda: all(("worker%d[" % i) in read(logfile) for i in (0, 1)), 10,
                       "worker: both pipeline processes log to the new file")
            check(True, "worker: both pipeline processes reopened the file")
            check(children_of(p.pid) == kids, "worker: the same pipeline processes")
        check(True, "%s: new log file: %s" % (prog, read(logfile).strip().splitlines()[0]))
        lst.wait("WATCHDOG", 10, "%s: watchdog pings after SIGHUP" % prog, since=t_hup,
                 count=2)
        old = read(rotated)
        check("reopened" not in old, "%s: the rotated file stops before the reopen" % prog)

        # every message came from the main process
        pids = {pid for _, pid, _ in lst.lines()}
        check(pids == {p.pid}, "%s: every notification from pid %d (got %s)" %
              (prog, p.pid, sorted(x for x in pids if x is not None)))

        # SIGTERM: STOPPING=1, exit 0
        rc = stop(p)
        check(rc == 0, "%s: SIGTERM exits 0 (got %d)" % (prog, rc))
        # the listener's thread may not have read the last datagram yet: wait for it
        check(len(lst.wait("STOPPING", 10, "%s: STOPPING=1" % prog)) == 1,
              "%s: STOPPING=1 sent" % prog)

        # again without log.file: SIGHUP changes nothing and stops nothing
        t1 = time.monotonic()
        p = c.start(prog + "-2", c.argv(prog), notify=lst.path)
        lst.wait("READY", 60, "%s (no log.file): READY=1" % prog, since=t1)
        os.kill(p.pid, signal.SIGHUP)
        t_hup = time.monotonic()
        lst.wait("WATCHDOG", 10, "%s (no log.file): watchdog pings after SIGHUP" % prog,
                 since=t_hup, count=3)
        check(p.poll() is None, "%s (no log.file): SIGHUP did not stop it" % prog)
        check(not os.path.exists(logfile + ".2"), "no stray files")
        rc = stop(p)
        check(rc == 0, "%s (no log.file): SIGTERM exits 0 (got %d)" % (prog, rc))
        check(len(lst.wait("STOPPING", 10, "%s (no log.file): STOPPING=1" % prog,
                           since=t1)) == 1, "%s (no log.file): STOPPING=1" % prog)
        out = read(os.path.join(c.dir, prog + "-2.out"))
        check("INFO" in out and "log file" not in out,
              "%s (no log.file): logs on stderr, no reopen" % prog)
    finally:
        lst.close()


def case_plain(c, a):
    make_images(a.bin, os.path.join(c.dir, "in"), 20)
    procs = {prog: c.start(prog, c.argv(prog)) for prog in PROGRAMS}
    check(c.submit(os.path.join(c.dir, "in"), "plain") == 0, "submit of 20 jobs exits 0")
    for prog, p in procs.items():
        os.kill(p.pid, signal.SIGHUP)
    # Still serving after SIGHUP: a second run goes through (stored once each).
    check(c.submit(os.path.join(c.dir, "in"), "plain-2") == 0,
          "after SIGHUP to all three, a second submit exits 0")
    for prog, p in procs.items():
        check(p.poll() is None, "%s: still running after SIGHUP" % prog)
    for prog in ("worker", "sink", "broker"):
        rc = stop(procs[prog])
        check(rc == 0, "%s: SIGTERM exits 0 (got %d)" % (prog, rc))
        out = read(os.path.join(c.dir, prog + ".out"))
        check("systemd" not in out and "reopened" not in out,
              "%s: says nothing about systemd or log files" % prog)


def case_verify(c, a):
    tool = shutil.which("systemd-analyze")
    if not tool:
        print("skip: no systemd-analyze")
        return SKIP
    units = os.path.join(os.path.dirname(a.bin.rstrip("/")), "systemd")
    copies = os.path.join(c.dir, "units")
    os.makedirs(copies)
    for prog in PROGRAMS:
        name = "facemill-%s.service" % prog
        text = read(os.path.join(units, name))
        check(text != "", "%s generated in %s" % (name, units))
        check("@" not in text, "%s: every @VAR@ substituted" % name)
        m = re.search(r"^ExecStart=(\S+)", text, re.M)
        check(m and m.group(1) == os.path.join(a.install_bindir, "facemill-" + prog),
              "%s: ExecStart=%s, in the install's bin directory" % (name, m and m.group(1)))
        for key in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30",
                    "ExecReload=/bin/kill -HUP $MAINPID"):
            check(re.search(r"^%s$" % re.escape(key), text, re.M), "%s: %s" % (name, key))
        # verify checks that ExecStart's program exists and is executable, so the
        # copies start this build's programs. User= and Group= are dropped: the
        # facemill user is created when the service is installed (ops/README.md), not
        # on a test machine, and which systemd versions resolve users in verify
        # differs; everything else stays as installed.
        text = text.replace(m.group(1), os.path.join(a.bin, "facemill-" + prog))
        text = re.sub(r"^(User|Group)=.*\n", "", text, flags=re.M)
        with open(os.path.join(copies, name), "w") as f:
            f.write(text)
    paths = [os.path.join(copies, "facemill-%s.service" % p) for p in PROGRAMS]
    r = subprocess.run([tool, "verify"] + paths, capture_output=True, timeout=120,
                       env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"))
    said = (r.stdout + r.stderr).decode("utf-8", "replace").strip()
    # verify exits 0 on unknown keys and bad values too, printing a warning: anything
    # it says is a finding.
    check(r.returncode == 0 and said == "",
          "systemd-analyze verify: exit %d, %s" % (r.returncode, said or "nothing to say"))
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True, choices=PROGRAMS + ("plain", "verify"))
    ap.add_argument("--bin", default=os.environ.get("FACEMILL_BIN_DIR", "build/bin"))
    ap.add_argument("--install-bindir", dest="install_bindir", default="/usr/local/bin",
                    help="the bin directory the generated units name (FACEMILL_BINDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)
    for prog in ("facemill", "facemill-broker", "facemill-sink", "facemill-worker"):
        if not os.access(os.path.join(a.bin, prog), os.X_OK):
            print("skip: %s not built" % prog)
            return SKIP
    tmp = tempfile.mkdtemp(prefix="fmsd.", dir="/tmp")  # short: ipc paths are limited
    c = Cluster(a.bin, tmp)
    code = 1
    try:
        if a.case in PROGRAMS:
            r = case_program(c, a, a.case)
        else:
            r = {"plain": case_plain, "verify": case_verify}[a.case](c, a)
        c.stop_all()
        c.check_outputs()
        code = r if r == SKIP else 0
    except Failure as e:
        print("FAIL:", e, flush=True)
        c.dump()
    finally:
        c.stop_all()
        if code != 1 and not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("files kept in", tmp)
    print("test_systemd %s: %s" % (a.case, {0: "passed", SKIP: "skipped"}.get(code, "FAILED")))
    return code


if __name__ == "__main__":
    sys.exit(main())
