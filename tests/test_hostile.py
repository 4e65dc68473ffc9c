#!/usr/bin/env python3
"""test_hostile.py - hostile peers against a secured cluster: real facemill-broker,
facemill-sink and facemill-worker processes with CurveZMQ keys made by `facemill
keygen`, clients and workers on 127.0.0.1 TCP, the sink's sockets on ipc://, and
attackers written here with pyzmq and the Python code of proto/facemill.proto (as
ops/examples/submit.py and the service tests use it).

One case per run (--case NAME), each a ctest test of its own:
  unkeyed_worker   a worker without keys and one with a key nobody admitted connect
                   first and ask for every job: they get nothing (their handshakes
                   fail), while a keyed client's jobs all complete with a keyed worker
  refused_told     a submit, a status and a worker whose keys the broker refuses are
                   told why (submit exits 3 at once) instead of waiting in silence
  client_as_worker a client's key (and the sink's) on the workers socket, a worker's
                   key on the clients socket: refused, and the client's jobs still
                   complete with the real worker alone
  forged_commit    a Commit from a key that is not the sink's never arrives; with the
                   sink's key, commits for a token never dispatched (a queued job, a
                   job held by a worker) are refused and not counted, the client hears
                   nothing; the real worker then commits every job once
  forged_result    results pushed with a worker's key before the real ones (for
                   queued jobs, and for a job a worker holds) are refused and
                   dropped; pushers without keys or with a client's key fail their
                   handshakes; every stored row is the real worker's
  revoked_key      an admitted worker key ("insider") holding two jobs, with a
                   connection to the sink too, is removed from the allowlist: its
                   next heartbeat is refused, the broker drops it and re-queues its
                   jobs, its result pushed over the live connection is dropped by
                   the sink; the real worker stores all six jobs, none from it
  max_faces        a result of 300,000 faces (and one of max_faces + 1) from the
                   worker the job was dispatched to is refused: no row, no face; the
                   same worker's result within the limit is stored
  credit           a keyed worker asking for credit 2^32-1 is given broker.max_credit
                   jobs and no more; after it hands them back the real worker does all
  exposed_bind     broker and sink bound to every interface without keys refuse to
                   start; with security.insecure they start and warn at every start;
                   with keys they start without the warning
  keygen           facemill keygen's files read with pyzmq's zmq.auth, mode 0600 for
                   the secret one, never overwritten, -d made when missing; pyzmq's
                   own certificate files work as facemill keys
  paths            by-path jobs: without worker.path_root every one fails; with it, a
                   FIFO, a symbolic link out of the root, a ../ escape, a readable
                   file outside the root, a missing file and a directory each fail
                   with the one generic error text and no hash, while a file beneath
                   the root is labelled; the worker then finishes a normal job; the
                   same again with openat2 failing ENOSYS (a seccomp filter), where
                   the O_NOFOLLOW walk refuses even a link within the root
  strings          ids with a NUL (a\0X and a\0Y) refuse the Submit with the reason;
                   ids not UTF-8, with control characters or over-long, a tag with
                   a control character and unreadable reasons that are empty, not
                   UTF-8, with a control character or over-long are REJECTED each
                   with its reason (a sound one is an io row with it) while the
                   good jobs of the same Submit are taken; a worker named
                   "w\n\x1b[31m..." is refused with the reason; no log holds a raw
                   control character; the export of names that are not UTF-8 is valid
                   JSON on every line, and a =HYPERLINK(...) name is neutralised in CSV;
                   facemill submit refuses a --tag the broker would reject
  deep_folder      a folder 3,000 levels deep: facemill submit warns with a clear
                   line (not a crash), skips what lies deeper than 256 levels, sends
                   nothing of it and exits 1; a folder 100 levels deep is walked to
                   its image
  flood_submit     a Submit of 600,000 jobs is refused whole (broker.max_submit_jobs)
                   before it is decoded: the broker stays under 200 MiB, an honest
                   worker's heartbeats keep coming, and a keyed client's jobs complete
  big_bodies       20 queued jobs of 3 MB grow the broker by less than half their size
                   (bodies stay in the journal) and complete
  disk_full        journal and results database on a small tmpfs (root only; exit 77
                   otherwise), filled: a Submit is answered SlowDown, the sink cannot
                   store, both say so in `facemill status` and keep running; the
                   filler removed, the run completes with every job stored once;
                   filled again within the minute, the broker logs the new episode
                   (once: a Submit again within it adds no line)
  lost_journal     a journal replaced while `facemill submit` waits: the client says
                   jobs were lost and exits 3; the same submit again labels them all;
                   a third finds them stored and still counts the failed one
  journal_full_start  a journal on a full disk at start: not "damaged", --recover
                   changes nothing, with space the broker starts with every job
  journal_recover  a journal truncated mid-page: the broker refuses to start and names
                   --recover; facemill-broker --recover keeps the readable jobs in a
                   new journal (the damaged file aside), and the restarted broker
                   finishes every one of them exactly once

Every wait is for a state (a log line, a handshake event, a status, rows) with a
deadline; "nothing arrived" is checked over the whole run of the jobs, which the
attackers were connected for. Exit 0 pass, 1 fail, 77 skip (no python3-zmq, no
generated facemill_pb2.py, a libzmq without CURVE, or disk_full without root).
"""
import hashlib
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_service import (SKIP, Cluster, Failure, Skip, check, db_query,  # noqa: E402
                          exactly_once, finish_submit, free_port_block, make_images,
                          read_log, case_args, run_case, sanitizer_clean,
                          wait_until)

zmq = None
pb = None
WAIT = 60  # seconds any state that must come may take (sanitizer builds are slow)


# ---- peers written here -------------------------------------------------------------

def envelope(**body):
    e = pb.Envelope(version_major=1, version_minor=1)
    for k, v in body.items():
        getattr(e, k).CopyFrom(v)
    return e.SerializeToString()


def parse(data):
    e = pb.Envelope()
    e.ParseFromString(data)
    return e


class Peer:
    """A pyzmq socket of this test: plain, or CURVE with the certificate at cert
    (NAME.key_secret) towards the server whose public certificate is server; a
    monitor reports how its handshakes end."""

    def __init__(self, ctx, kind, endpoint, cert=None, server=None):
        import zmq.auth
        self.sock = ctx.socket(kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        if cert:
            public, secret = zmq.auth.load_certificate(cert)
            self.sock.curve_publickey = public
            self.sock.curve_secretkey = secret
            self.sock.curve_serverkey = zmq.auth.load_certificate(server)[0]
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH |
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self.sock.connect(endpoint)
        self.received = []

    def handshake(self, timeout=WAIT):
        """The first handshake event: "ok", "auth" (the ZAP handler said no),
        "protocol" / "failed" (mechanism mismatch, undecryptable), or a Failure."""
        from zmq.utils.monitor import recv_monitor_message
        if not self.monitor.poll(timeout * 1000):
            raise Failure("no handshake event within %ds" % timeout)
        ev = recv_monitor_message(self.monitor)["event"]
        return {zmq.EVENT_HANDSHAKE_SUCCEEDED: "ok", zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol"}.get(ev, "failed")

    def send(self, **body):
        """Sends without waiting: a socket whose handshake was refused has no peer to
        queue for (it would block). Returns whether the message was queued."""
        try:
            self.sock.send(envelope(**body), zmq.DONTWAIT)
            return True
        except zmq.Again:
            return False

    def drain(self):
        """Reads whatever arrived (kept in self.received); returns the new ones."""
        new = []
        while self.sock.poll(0):
            new.append(parse(self.sock.recv()))
        self.received += new
        return new

    def next(self, kind, timeout=WAIT, pred=lambda e: True):
        """The next message with body kind (and pred) within timeout, or Failure."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                e = parse(self.sock.recv())
                self.received.append(e)
                if e.WhichOneof("body") == kind and pred(e):
                    return e
        raise Failure("no %s within %ds" % (kind, timeout))

    def close(self):
        self.sock.disable_monitor()
        self.monitor.close()
        self.sock.close()


class Hostile:
    """A secured cluster (Cluster.secure: keys for broker, sink, worker, client) with
    broker.clients and broker.workers on 127.0.0.1 TCP and the sink's sockets on
    ipc://, plus what attackers need: the key files and a ZeroMQ context."""

    def __init__(self, c, a, broker_sets=None):
        port = free_port_block(2)
        c.endpoints["broker.clients"] = "tcp://127.0.0.1:%d" % port
        c.endpoints["broker.workers"] = "tcp://127.0.0.1:%d" % (port + 1)
        c.sets.update(c.endpoints)
        # The workers written here heartbeat only when they wait for something: the
        # broker must not take them for dead meanwhile (they say goodbye when done).
        c.sets["broker.worker_expiry_ms"] = "60000"
        self.c, self.a = c, a
        self.keys = c.secure()
        self.ctx = zmq.Context()
        self.peers = []
        subprocess.run([os.path.join(a.bin, "facemill"), "keygen", "stranger", "-d",
                        self.keys], check=True, capture_output=True, timeout=30)

    def cert(self, name):
        return os.path.join(self.keys, name + ".key_secret")

    def public(self, name):
        """The Z85 public key of certificate name, as logs print it."""
        import zmq.auth
        return zmq.auth.load_certificate(os.path.join(self.keys, name + ".key"))[0].decode()

    def peer(self, kind, endpoint_key, cert=None):
        """A Peer on the cluster's endpoint_key with certificate cert (a name), or plain."""
        server = "sink" if endpoint_key == "sink.results" else "broker"
        p = Peer(self.ctx, kind, self.c.endpoints[endpoint_key],
                 self.cert(cert) if cert else None,
                 os.path.join(self.keys, server + ".key") if cert else None)
        self.peers.append(p)
        return p

    def worker_peer(self, cert, credit=1):
        """A worker written here: WorkerReady with credit, after its handshake."""
        w = self.peer(zmq.DEALER, "broker.workers", cert)
        w.send(worker_ready=pb.WorkerReady(credit=credit, name="hostile-" + (cert or "plain")))
        return w

    def client_peer(self):
        return self.peer(zmq.DEALER, "broker.clients", "client")

    def submit(self, client, ids, tag="h"):
        """Submits jobs with these ids (small JPEG-ish bytes) and waits for the ack."""
        sub = pb.Submit(request_id=len(client.received) + 1)
        for i in ids:
            sub.jobs.add(id=i, tag=tag, name=i + ".jpg", data=self.jpeg)
        client.send(submit=sub)
        ack = client.next("submit_ack")
        states = [j.state for j in ack.submit_ack.jobs]
        check(states == [pb.JobAck.ACCEPTED] * len(ids), "%d jobs accepted" % len(ids))

    def status(self, client, tag="h"):
        rid = 10 ** 6 + len(client.received)
        client.send(status_request=pb.StatusRequest(tag=tag, request_id=rid))
        return client.next("status_reply", pred=lambda e: e.status_reply.request_id == rid
                           ).status_reply

    def log_has(self, name, text, count=1):
        wait_until(lambda: read_log(self.c, name).count(text) >= count, WAIT,
                   "%s in the %s log" % (text, name))

    def close(self):
        for p in self.peers:
            p.close()
        self.ctx.term()


class HonestWorker(threading.Thread):
    """A keyed worker written here that heartbeats every broker.heartbeat_ms on its
    own thread and records when the broker's heartbeats arrive (beats), to measure
    how long a flood keeps the broker from serving its peers. The jobs it is sent
    it keeps, or (hand_back) gives back at once, so a real worker does them."""

    def __init__(self, h, hand_back=False, interval_ms=200):
        super().__init__(daemon=True)
        self.peer = h.peer(zmq.DEALER, "broker.workers", "worker")
        self.beats = []
        self.jobs = 0
        self.stop = False
        self.hand_back = hand_back
        self.interval = interval_ms / 1000.0
        self.peer.send(worker_ready=pb.WorkerReady(credit=1, name="honest"))

    def run(self):
        next_hb = 0.0
        sock = self.peer.sock
        while not self.stop:
            now = time.monotonic()
            if now >= next_hb:
                self.peer.send(heartbeat=pb.Heartbeat(credit=1, busy=self.jobs,
                                                      name="honest"))
                next_hb = now + self.interval
            if sock.poll(20):
                e = parse(sock.recv())
                kind = e.WhichOneof("body")
                if kind == "heartbeat":
                    self.beats.append(time.monotonic())
                elif kind == "job" and self.hand_back:
                    self.peer.send(job_done=pb.JobDone(job_id=e.job.id,
                                                       outcome=pb.JobDone.HANDED_BACK))
                elif kind == "job":
                    self.jobs += 1

    def gap_ms(self, t0, t1):
        """The longest gap between broker heartbeats over [t0, t1], the window's ends
        counted as heartbeats (a broker silent throughout shows the window)."""
        pts = [t0] + [t for t in self.beats if t0 <= t <= t1] + [t1]
        return max(y - x for x, y in zip(pts, pts[1:])) * 1000.0

    def finish(self):
        self.stop = True
        self.join(10)


def proc_kib(pid, field):
    """A field of /proc/PID/status in KiB (VmHWM, VmRSS)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise Failure("no %s in /proc/%d/status" % (field, pid))


def jpeg_bytes(a, tmp):
    make_images(a.bin, os.path.join(tmp, "one"), 1)
    d = os.path.join(tmp, "one")
    with open(os.path.join(d, sorted(os.listdir(d))[0]), "rb") as f:
        return f.read()


def start(h, sink_sets=None, broker_sets=None):
    h.c.sink(sink_sets)
    h.c.broker(broker_sets)
    h.log_has("broker", "CurveZMQ on every socket")
    h.log_has("sink", "storing results")


def stop_broker(c):
    """Stops c's newest broker as its unit would (SIGTERM) and checks it exits 0."""
    b = [p for p in c.procs if p.fm_name == "broker"][-1]
    os.killpg(b.pid, signal.SIGTERM)
    check(b.wait(WAIT) == 0, "the broker stops")


def real_worker_rows(h, n):
    """Every one of n rows was stored from the real worker's result."""
    names = re.findall(r" worker (\S+): credit ", read_log(h.c, "worker"))
    rows = db_query(h.c, "SELECT worker, source, n_faces FROM images")
    check(len(rows) == n and all(r[0] in names and r[1] != "forged" for r in rows),
          "all %d rows are the real worker's (%s)" % (n, names))
    staged = db_query(h.c, "SELECT count(*) FROM staged")[0][0]
    check(staged == 0, "nothing left staged (%d)" % staged)


# ---- cases --------------------------------------------------------------------------

def case_unkeyed_worker(h):
    start(h)
    plain = h.worker_peer(None, credit=1000)
    check(plain.handshake() in ("protocol", "failed"),
          "a worker without keys fails its handshake")
    # the broker logs such refusals (the ZAP handler never hears of them)
    h.log_has("broker", "handshakes refused on the broker.workers socket: ")
    stranger = h.worker_peer("stranger", credit=1000)
    check(stranger.handshake() == "auth", "a worker with an unknown key is refused by ZAP")
    h.log_has("broker", "key %s is not in security.workers_dir" % h.public("stranger"))
    inp = os.path.join(h.c.dir, "in")
    make_images(h.a.bin, inp, 40)
    h.c.worker("worker", processes=1)
    p = h.c.submit([inp], "keyed")
    deadline = time.monotonic() + 240
    while p.poll() is None and time.monotonic() < deadline:
        plain.drain()
        stranger.drain()
        time.sleep(0.05)
    check(finish_submit(h.c, p, 10) == 0, "the keyed client's submit exits 0")
    exactly_once(h.c, 40)
    plain.drain()
    stranger.drain()
    check(not plain.received and not stranger.received,
          "the unkeyed and the unknown worker received nothing (%d, %d messages)" %
          (len(plain.received), len(stranger.received)))
    real_worker_rows(h, 40)
    st = h.status(h.client_peer(), "keyed")
    check(st.workers == 1 and st.tag_committed == 40,
          "the broker knows one worker (%d) and 40 commits" % st.workers)


def case_client_as_worker(h):
    start(h)
    as_worker = h.worker_peer("client", credit=1000)
    check(as_worker.handshake() == "auth", "a client's key is refused on the workers socket")
    h.log_has("broker", "key %s is not in security.workers_dir" % h.public("client"))
    sink_as_worker = h.worker_peer("sink", credit=1000)
    check(sink_as_worker.handshake() == "auth", "the sink's key is refused there too")
    as_client = h.peer(zmq.DEALER, "broker.clients", "worker")
    check(as_client.handshake() == "auth", "a worker's key is refused on the clients socket")
    h.log_has("broker", "key %s is not in security.clients_dir" % h.public("worker"))
    as_client.send(status_request=pb.StatusRequest(request_id=1))
    inp = os.path.join(h.c.dir, "in")
    make_images(h.a.bin, inp, 30)
    h.c.worker("worker", processes=1)
    p = h.c.submit([inp], "roles")
    deadline = time.monotonic() + 240
    while p.poll() is None and time.monotonic() < deadline:
        for x in (as_worker, sink_as_worker, as_client):
            x.drain()
        time.sleep(0.05)
    check(finish_submit(h.c, p, 10) == 0, "the client's submit exits 0")
    exactly_once(h.c, 30)
    for x in (as_worker, sink_as_worker, as_client):
        x.drain()
    check(not as_worker.received and not sink_as_worker.received and not as_client.received,
          "the misused keys received nothing")
    real_worker_rows(h, 30)


def case_refused_told(h):
    """A refused peer is told why instead of waiting in silence: a submit and a status
    with a key the broker does not admit end at once with the reason (submit exit 3),
    a status without keys says one side has keys and the other none, and a worker
    with a client's key says in its log that the broker refused its key."""
    c = h.c
    start(h)
    fm = os.path.join(h.a.bin, "facemill")
    inp = os.path.join(c.dir, "rt")
    make_images(h.a.bin, inp, 3)
    kd = os.path.join(c.dir, "k")
    subprocess.run([fm, "keygen", "nobody-knows", "-d", kd], capture_output=True,
                   timeout=30)
    stranger = {"security.cert": os.path.join(kd, "nobody-knows.key_secret")}
    t0 = time.monotonic()
    r = subprocess.run([fm, "submit", "--tag", "rt", "--progress", "none", inp] +
                       c.args(stranger), capture_output=True, timeout=120)
    took = time.monotonic() - t0
    check(r.returncode == 3 and b"the broker refused this program's key" in r.stderr and
          took < 30, "submit with an unknown key: exit 3 at once, saying so "
          "(%d, %.1f s: %s)" % (r.returncode, took, r.stderr.decode()[-300:]))
    r = subprocess.run([fm, "status"] + c.args(stranger), capture_output=True, timeout=120)
    check(r.returncode != 0 and b"the broker refused this program's key" in r.stderr,
          "status with an unknown key says so (%d: %s)" % (r.returncode,
                                                           r.stderr.decode()[-300:]))
    r = subprocess.run([fm, "status"] + c.args({"security.cert": ""}), capture_output=True,
                       timeout=120)
    check(r.returncode != 0 and b"one side has CurveZMQ keys and the other none" in r.stderr,
          "status without keys says one side has keys (%d: %s)" % (r.returncode,
                                                                   r.stderr.decode()[-300:]))
    c.worker("badworker", overrides={"security.cert": c.certs["client"]})
    h.log_has("badworker", "the broker refused this program's key")


def case_forged_commit(h):
    start(h)
    client = h.client_peer()
    ids = ["fc-0", "fc-1", "fc-2"]
    h.submit(client, ids, "fc")
    # fc-0 is dispatched to a keyed worker written here, which keeps it.
    w = h.worker_peer("worker", credit=1)
    job = w.next("job").job
    check(job.id == "fc-0" and len(job.token) == 16, "fc-0 dispatched with a 16-byte token")
    # Not the sink's key: the connection is refused, nothing it sends arrives.
    outsider = h.peer(zmq.DEALER, "sink.commits", "client")
    check(outsider.handshake() == "auth", "a client's key is refused on the commits socket")
    h.log_has("broker", "key %s is not in security.sink_dir" % h.public("client"))
    entries = [pb.CommitEntry(job_id=i, token=job.token, stored=True, failed=False)
               for i in ids]
    outsider.send(commit=pb.Commit(entries=entries))
    # The sink's key with tokens never dispatched: fc-0 (held by the worker), fc-1
    # (queued), and a staged report for fc-2 that the forger gets refused.
    forger = h.peer(zmq.DEALER, "sink.commits", "sink")
    check(forger.handshake() == "ok", "the sink's key is admitted on the commits socket")
    fake = os.urandom(16)
    forger.send(commit=pb.Commit(entries=[
        pb.CommitEntry(job_id="fc-0", token=fake, stored=True, failed=False),
        pb.CommitEntry(job_id="fc-1", token=fake, stored=True, failed=False),
        pb.CommitEntry(job_id="fc-2", token=fake, stored=False, failed=False)]))
    reply = forger.next("commit_reply").commit_reply
    check([e.job_id for e in reply.refused] == ["fc-2"] and not reply.confirmed,
          "the staged report with a forged token is refused")
    for i in ("fc-0", "fc-1"):
        h.log_has("broker", "sink reported job %s stored with a token it was never "
                  "dispatched with: not counted" % i)
    st = h.status(client, "fc")
    check(st.tag_total == 3 and st.tag_committed == 0 and st.in_flight == 1,
          "nothing counted committed: %d of %d, %d at a worker" %
          (st.tag_committed, st.tag_total, st.in_flight))
    client.drain()
    check(not [e for e in client.received if e.WhichOneof("body") == "commit"],
          "the client was told nothing is committed")
    # The held job goes back; the real worker does all three.
    w.send(job_done=pb.JobDone(job_id="fc-0", outcome=pb.JobDone.HANDED_BACK))
    w.send(worker_bye=pb.WorkerBye())
    h.c.worker("worker", processes=1)
    committed = set()
    deadline = time.monotonic() + WAIT
    while committed != set(ids) and time.monotonic() < deadline:
        for e in client.drain():
            if e.WhichOneof("body") == "commit":
                committed.update(x.job_id for x in e.commit.entries)
        time.sleep(0.05)
    check(committed == set(ids), "the client hears of the three commits: %s" % sorted(committed))
    exactly_once(h.c, 3)
    real_worker_rows(h, 3)


def fake_result(job_id, token, faces=1):
    r = pb.Result(job_id=job_id, tag="fr", source="forged", worker="forger", token=token,
                  width=10, height=10)
    for _ in range(faces):
        r.faces.add(box=[1, 2, 3, 4], score=0.99)
    return r


def case_forged_result(h):
    start(h)
    client = h.client_peer()
    ids = ["fr-%d" % i for i in range(5)]
    h.submit(client, ids, "fr")
    # Pushers without keys, or with a client's key: their handshakes fail.
    plain = h.peer(zmq.PUSH, "sink.results")
    check(plain.handshake() in ("protocol", "failed"), "a pusher without keys is refused")
    h.log_has("sink", "handshakes refused on the sink.results socket: ")
    as_client = h.peer(zmq.PUSH, "sink.results", "client")
    check(as_client.handshake() == "auth", "a client's key is refused on sink.results")
    # A worker's key (admitted to push) with guessed tokens, before any dispatch.
    pusher = h.peer(zmq.PUSH, "sink.results", "worker")
    check(pusher.handshake() == "ok", "a worker's key may push results")
    for i in ids:
        pusher.send(result=fake_result(i, os.urandom(16)))
    for i in ids:
        h.log_has("sink", "result for %s refused by the broker" % i)
    # The sink logs each refusal before the batch that unstages them commits.
    wait_until(lambda: db_query(h.c, "SELECT count(*) FROM staged")[0][0] == 0, WAIT,
               "the refused results unstaged")
    check(db_query(h.c, "SELECT count(*) FROM images")[0][0] == 0,
          "the forged results are neither stored nor kept staged")
    # fr-0 at a keyed worker written here: a forged result for it arrives first, the
    # real one (with the dispatch token) after; the real one is the row.
    w = h.worker_peer("worker", credit=1)
    job = w.next("job").job
    pusher.send(result=fake_result(job.id, os.urandom(16)))
    h.log_has("sink", "result for %s refused by the broker" % job.id, count=2)
    real = pb.Result(job_id=job.id, tag="fr", source="real-by-hand", worker="hand",
                     token=job.token, width=7, height=7)
    w_push = h.peer(zmq.PUSH, "sink.results", "worker")
    w_push.send(result=real)
    w.send(job_done=pb.JobDone(job_id=job.id, outcome=pb.JobDone.DONE))
    wait_until(lambda: db_query(h.c, "SELECT count(*) FROM images")[0][0] == 1, WAIT,
               "the real result of %s stored" % job.id)
    row = db_query(h.c, "SELECT source, worker, n_faces FROM images WHERE job_id = ?",
                   (job.id,))
    check(row == [("real-by-hand", "hand", 0)], "%s is the real result: %s" % (job.id, row))
    w.send(worker_bye=pb.WorkerBye())
    # The real worker does the rest.
    h.c.worker("worker", processes=1)
    wait_until(lambda: db_query(h.c, "SELECT count(*) FROM images")[0][0] == 5, WAIT,
               "5 rows")
    rows = db_query(h.c, "SELECT source, worker FROM images WHERE job_id != ?", (job.id,))
    check(len(rows) == 4 and all(r[0] != "forged" and r[1] != "forger" for r in rows),
          "no forged row: %s" % rows)
    exactly_once(h.c, 5)


def case_revoked_key(h):
    subprocess.run([os.path.join(h.a.bin, "facemill"), "keygen", "insider", "-d", h.keys],
                   check=True, capture_output=True, timeout=30)
    admitted = os.path.join(h.keys, "workers", "insider.key")
    shutil.copy(os.path.join(h.keys, "insider.key"), admitted)
    start(h)
    insider = h.worker_peer("insider", credit=2)
    check(insider.handshake() == "ok", "the insider's key is admitted on broker.workers")
    pusher = h.peer(zmq.PUSH, "sink.results", "insider")
    check(pusher.handshake() == "ok", "and on sink.results")
    client = h.client_peer()
    ids = ["rk-%d" % i for i in range(6)]
    h.submit(client, ids, "rk")
    held = [insider.next("job").job for _ in range(2)]
    os.remove(admitted)
    # Live connections, made while the key was admitted: refused from now on.
    insider.send(heartbeat=pb.Heartbeat(credit=6, busy=2, name="hostile-insider"))
    h.log_has("broker", "key %s is no longer in security.workers_dir" % h.public("insider"))
    h.log_has("broker", "its key is no longer admitted: dropped, its 2 jobs re-queued")
    pusher.send(result=pb.Result(job_id=held[0].id, tag="rk", source="revoked",
                                 worker="insider", token=held[0].token, width=7, height=7))
    h.log_has("sink", "key %s is no longer in security.workers_dir" % h.public("insider"))
    h.c.worker("worker", processes=1)
    wait_until(lambda: db_query(h.c, "SELECT count(*) FROM images")[0][0] == 6, WAIT,
               "6 rows")
    exactly_once(h.c, 6)
    real_worker_rows(h, 6)
    insider.drain()
    jobs = [e for e in insider.received if e.WhichOneof("body") == "job"]
    check(len(jobs) == 2, "the insider got its 2 jobs before the removal and none after "
          "(%d)" % len(jobs))
    check(db_query(h.c, "SELECT count(*) FROM images WHERE source = 'revoked'")[0][0] == 0,
          "its pushed result is not stored")


def case_max_faces(h):
    start(h, sink_sets={"detect.max_faces": "5"})
    client = h.client_peer()
    h.submit(client, ["mf-0"], "mf")
    w = h.worker_peer("worker", credit=1)
    job = w.next("job").job
    push = h.peer(zmq.PUSH, "sink.results", "worker")
    check(push.handshake() == "ok", "the worker's key pushes")
    big = pb.Result(job_id=job.id, tag="mf", source="many", worker="hand", token=job.token)
    big.faces.extend([pb.Face()] * 300000)
    push.send(result=big)
    h.log_has("sink", "result for mf-0 refused: 300000 faces, more than detect.max_faces 5")
    six = fake_result(job.id, job.token, faces=6)
    push.send(result=six)
    h.log_has("sink", "result for mf-0 refused: 6 faces, more than detect.max_faces 5")
    check(db_query(h.c, "SELECT count(*) FROM images")[0][0] == 0 and
          db_query(h.c, "SELECT count(*) FROM faces")[0][0] == 0 and
          db_query(h.c, "SELECT count(*) FROM staged")[0][0] == 0,
          "no row, no face, nothing staged from the oversized results")
    ok = pb.Result(job_id=job.id, tag="mf", source="two", worker="hand", token=job.token)
    for k in range(2):
        ok.faces.add(box=[k, k, k + 5, k + 5], score=0.9)
    push.send(result=ok)
    w.send(job_done=pb.JobDone(job_id=job.id, outcome=pb.JobDone.DONE))
    wait_until(lambda: db_query(h.c, "SELECT count(*) FROM images")[0][0] == 1, WAIT,
               "the result within the limit stored")
    check(db_query(h.c, "SELECT source, n_faces FROM images") == [("two", 2)] and
          db_query(h.c, "SELECT count(*) FROM faces")[0][0] == 2,
          "the stored row has its 2 faces")
    st = h.status(client, "mf")
    check(st.tag_committed == 1, "the job is committed")


def case_credit(h):
    start(h)
    client = h.client_peer()
    ids = ["cr-%03d" % i for i in range(100)]
    h.submit(client, ids, "cr")
    greedy = h.worker_peer("worker", credit=2 ** 32 - 1)
    h.log_has("broker", "asked for credit 4294967295: given 64 (broker.max_credit)")
    got = []
    deadline = time.monotonic() + WAIT
    while len(got) < 64 and time.monotonic() < deadline:
        got += [e.job.id for e in greedy.drain() if e.WhichOneof("body") == "job"]
        greedy.send(heartbeat=pb.Heartbeat(credit=2 ** 32 - 1, busy=len(got)))
        time.sleep(0.05)
    # It holds 64: the broker dispatched all it would in the same turn as the 64th.
    st = h.status(client, "cr")
    got += [e.job.id for e in greedy.drain() if e.WhichOneof("body") == "job"]
    check(len(got) == 64 and st.in_flight == 64 and st.queued == 36 and
          st.worker[0].credit == 64,
          "the greedy worker holds 64 jobs (got %d), credit %d, %d queued" %
          (len(got), st.worker[0].credit, st.queued))
    for i in got:
        greedy.send(job_done=pb.JobDone(job_id=i, outcome=pb.JobDone.HANDED_BACK))
    greedy.send(worker_bye=pb.WorkerBye())
    h.c.worker("worker", processes=1)
    wait_until(lambda: h.status(client, "cr").tag_committed == 100, 240, "100 commits")
    exactly_once(h.c, 100)
    real_worker_rows(h, 100)


def run_until_exit(argv, log, timeout=WAIT):
    with open(log, "ab") as f:
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise Failure("%s did not exit within %ds" % (argv[0], timeout))


def case_exposed_bind(h):
    c, a = h.c, h.a
    port = free_port_block(2)
    clients_any = "tcp://0.0.0.0:%d" % port
    results_any = "tcp://*:%d" % (port + 1)
    plain = {k: v for k, v in c.sets.items() if not k.startswith("security.")}
    # What each binds to every interface (the broker pushes to the sink's port on
    # this machine: only binds are checked).
    broker_plain = dict(plain, **{"broker.clients": clients_any,
                                  "sink.results": "tcp://127.0.0.1:%d" % (port + 1)})
    sink_plain = dict(plain, **{"sink.results": results_any})

    def argv(prog, sets):
        out = [os.path.join(a.bin, prog)]
        for k, v in sets.items():
            out += ["--set", "%s=%s" % (k, v)]
        return out
    journal = os.path.join(c.dir, "journal.db")
    for prog, sets, key, ep in (("facemill-broker", broker_plain, "broker.clients", clients_any),
                                ("facemill-sink", sink_plain, "sink.results", results_any)):
        log = os.path.join(c.dir, prog + "-refused.log")
        rc = run_until_exit(argv(prog, sets), log)
        with open(log) as f:
            text = f.read()
        check(rc == 1 and "%s %s can be reached from other machines" % (key, ep) in text and
              "security.insecure" in text, "%s without keys on %s refuses to start (%d)" %
              (prog, ep, rc))
    check(not os.path.exists(journal), "the refused broker created no journal")
    # security.insecure: they start and warn, at every start.
    loose = {"security.insecure": "true"}
    for n in (1, 2):
        b = c.start("broker", argv("facemill-broker", dict(broker_plain, **loose)))
        s = c.start("sink", argv("facemill-sink", dict(sink_plain, **loose)))
        h.log_has("broker", "security.insecure: broker.clients %s is open to the network "
                  "without CURVE" % clients_any, count=n)
        h.log_has("sink", "security.insecure: sink.results %s is open to the network "
                  "without CURVE" % results_any, count=n)
        st = subprocess.run([os.path.join(a.bin, "facemill"), "status", "--set",
                             "broker.clients=tcp://127.0.0.1:%d" % port],
                            capture_output=True, timeout=30)
        check(st.returncode == 0, "start %d: the insecure broker serves" % n)
        for p in (b, s):
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)
    # With keys, the same binds start without a warning.
    before = [read_log(c, n).count("security.insecure") for n in ("broker", "sink")]
    c.broker({"broker.clients": clients_any,
              "sink.results": "tcp://127.0.0.1:%d" % (port + 1)})
    c.sink({"sink.results": results_any})
    h.log_has("broker", "CurveZMQ on every socket")
    h.log_has("sink", "storing results")
    check([read_log(c, n).count("security.insecure") for n in ("broker", "sink")] == before,
          "with keys: no warning")
    st = subprocess.run([os.path.join(a.bin, "facemill"), "status"] +
                        c.args({"broker.clients": "tcp://127.0.0.1:%d" % port}),
                        capture_output=True, timeout=30)
    check(st.returncode == 0, "with keys: a keyed client is answered on 0.0.0.0")


def case_keygen(h):
    import zmq.auth
    c, a = h.c, h.a
    fm = os.path.join(a.bin, "facemill")
    d = os.path.join(c.dir, "kg")
    os.makedirs(d)
    r = subprocess.run([fm, "keygen", "alice", "-d", d], capture_output=True, timeout=30)
    check(r.returncode == 0, "facemill keygen alice exits 0")
    printed = r.stdout.decode().strip()
    pub_path, sec_path = os.path.join(d, "alice.key"), os.path.join(d, "alice.key_secret")
    pub, none = zmq.auth.load_certificate(pub_path)
    pub2, sec = zmq.auth.load_certificate(sec_path)
    check(pub.decode() == printed and none is None and pub2 == pub and sec is not None,
          "zmq.auth.load_certificate reads both files: the printed public key")
    check(zmq.curve_public(sec) == pub, "the secret key belongs to the public key")
    check(stat.S_IMODE(os.stat(sec_path).st_mode) == 0o600 and
          stat.S_IMODE(os.stat(pub_path).st_mode) == 0o644,
          "NAME.key_secret is 0600, NAME.key 0644")
    with open(sec_path, "rb") as f:
        before = f.read()
    r = subprocess.run([fm, "keygen", "alice", "-d", d], capture_output=True, timeout=30)
    with open(sec_path, "rb") as f:
        after = f.read()
    check(r.returncode == 1 and b"not overwritten" in r.stderr and before == after,
          "a second keygen alice refuses and changes nothing")
    # -d names a directory that does not exist yet (ops/README's /etc/facemill/keys)
    nd = os.path.join(c.dir, "kg2", "keys")
    r = subprocess.run([fm, "keygen", "carol", "-d", nd], capture_output=True, timeout=30)
    check(r.returncode == 0 and os.path.isfile(os.path.join(nd, "carol.key_secret")),
          "keygen -d makes the missing directory and its parent: %s" % r.stderr.decode())
    r = subprocess.run([fm, "keygen", "carol", "-d", pub_path], capture_output=True,
                       timeout=30)
    check(r.returncode == 1 and b"not a directory" in r.stderr,
          "keygen -d naming a file is one error: %s" % r.stderr.decode().strip())
    # pyzmq's own certificate files as facemill keys: a client certificate made by
    # zmq.auth, admitted by the broker, is answered.
    start(h)
    py_pub, py_sec = zmq.auth.create_certificates(d, "bob")
    shutil.copy(py_pub, os.path.join(h.keys, "clients"))
    st = subprocess.run([fm, "status"] + c.args({"security.cert": py_sec}),
                        capture_output=True, timeout=30)
    check(st.returncode == 0 and b"queue:" in st.stdout,
          "a client with pyzmq's certificate files is answered: %s" % st.stderr.decode())


def submit_raw(client, jobs, request_id):
    """Sends a Submit of jobs given as (id, tag, name, data or path, or ("unreadable",
    reason)) with bytes for the strings, which may be anything (invalid UTF-8, NUL,
    controls): Python's protobuf only writes valid UTF-8, so such a string is written
    as a placeholder of its length and the placeholder's bytes replaced afterwards (the
    length prefixes stay right)."""
    sub = pb.Submit(request_id=request_id)
    swaps = []
    for jid, tag, name, src in jobs:
        j = sub.jobs.add()
        why = src[1] if isinstance(src, tuple) else None
        for field, raw in (("id", jid), ("tag", tag), ("name", name), ("unreadable", why)):
            if raw is None:
                continue
            try:
                setattr(j, field, raw.decode("utf-8"))
                continue
            except UnicodeDecodeError:
                pass
            ph = ("~%d~" % len(swaps)).ljust(len(raw), "~").encode()
            check(len(ph) == len(raw), "placeholder for %r" % raw)
            setattr(j, field, ph.decode())
            swaps.append((ph, raw))
        if isinstance(src, str):
            j.path = src
        elif not isinstance(src, tuple):
            j.data = src
    data = envelope(submit=sub)
    for ph, raw in swaps:
        check(data.count(ph) == 1, "placeholder %r unique" % ph)
        data = data.replace(ph, raw)
    client.sock.send(data)


def row_of(h, job_id):
    r = db_query(h.c, "SELECT error_code, error_text, sha256, width FROM images WHERE "
                 "job_id = ?", (job_id,))
    return r[0] if r else None


GENERIC = "not readable under worker.path_root"

# Runs argv[1:] with openat2 failing ENOSYS, as on kernels before Linux 5.6: a seccomp
# filter (classic BPF: syscall number 437, openat2 on every architecture, returns
# ERRNO(ENOSYS); anything else is allowed), inherited by the worker's processes.
WITHOUT_OPENAT2 = r"""
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
ins = lambda code, jt, jf, k: struct.pack("HBBI", code, jt, jf, k)
prog = ctypes.create_string_buffer(ins(0x20, 0, 0, 0) + ins(0x15, 0, 1, 437) +
                                   ins(0x06, 0, 0, 0x00050000 | 38) +
                                   ins(0x06, 0, 0, 0x7fff0000))
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fp = Fprog(4, ctypes.cast(prog, ctypes.c_void_p))
if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(fp), 0, 0) != 0:
    sys.exit("seccomp filter: %s" % os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
"""


def have_openat2():
    """Whether this kernel has openat2 (Linux >= 5.6)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    how = ctypes.create_string_buffer(24)  # struct open_how, all zero: O_RDONLY
    fd = libc.syscall(437, -100, b"/", how, 24)
    if fd >= 0:
        os.close(fd)
    return fd >= 0


def case_paths(h):
    start(h)
    client = h.client_peer()
    d = h.c.dir
    root = os.path.join(d, "root")
    outside = os.path.join(d, "outside")
    os.makedirs(os.path.join(root, "sub"))
    os.makedirs(outside)
    with open(os.path.join(root, "good.jpg"), "wb") as f:
        f.write(h.jpeg)
    secret = os.path.join(outside, "shadow")  # readable by the worker, but outside
    with open(secret, "wb") as f:
        f.write(h.jpeg)
    os.chmod(secret, 0o600)
    os.mkfifo(os.path.join(root, "fifo.jpg"))
    os.symlink(secret, os.path.join(root, "escape.jpg"))
    os.symlink("../outside/shadow", os.path.join(root, "escape-rel.jpg"))
    # Without worker.path_root: by-path jobs fail, a bytes job after them is labelled.
    w1 = h.c.worker("worker", processes=1)
    submit_raw(client, [(b"off-0", b"p", None, os.path.join(root, "good.jpg")),
                        (b"off-1", b"p", None, secret)], 1)
    client.next("submit_ack")
    wait_until(lambda: db_query(h.c, "SELECT count(*) FROM images")[0][0] == 2, WAIT,
               "the two by-path jobs stored without worker.path_root")
    for jid in ("off-0", "off-1"):
        code, text, sha, width = row_of(h, jid)
        check(code == pb.ERROR_IO and text == GENERIC and sha is None and width is None,
              "%s without worker.path_root: %s" % (jid, (code, text, sha)))
    submit_raw(client, [(b"off-data", b"p", b"x.jpg", h.jpeg)], 2)
    client.next("submit_ack")
    wait_until(lambda: row_of(h, "off-data") is not None, WAIT, "the bytes job stored")
    check(row_of(h, "off-data")[0] == 0, "the bytes job after them is labelled")
    os.killpg(w1.pid, signal.SIGTERM)
    w1.wait(30)
    # With worker.path_root: only the file beneath it is read. A symbolic link that
    # stays beneath the root is followed by openat2 (RESOLVE_BENEATH), not by the
    # O_NOFOLLOW walk of kernels without it: which one ran shows there.
    w2 = h.c.worker("worker2", processes=1, overrides={"worker.path_root": root})
    hostile = {
        "fifo": os.path.join(root, "fifo.jpg"),
        "symlink": os.path.join(root, "escape.jpg"),
        "symlink-rel": os.path.join(root, "escape-rel.jpg"),
        "dotdot": root + "/../outside/shadow",
        "outside": secret,
        "etc": "/etc/passwd",
        "missing": os.path.join(root, "missing.jpg"),
        "dir": os.path.join(root, "sub"),
    }
    openat2 = have_openat2()

    def confined(prefix, request_id, inner_followed):
        """The hostile jobs, the file beneath the root and an inner link (one of this
        round's own: a refusal never replaces another round's labels of a name), then a
        bytes job, through the worker running now."""
        inner = os.path.join(root, prefix + "inner.jpg")
        os.symlink("good.jpg", inner)
        jobs = [((prefix + k).encode(), b"p", None, v) for k, v in sorted(hostile.items())]
        jobs.append(((prefix + "good").encode(), b"p", None, os.path.join(root, "good.jpg")))
        jobs.append(((prefix + "inner").encode(), b"p", None, inner))
        submit_raw(client, jobs, request_id)
        client.next("submit_ack")
        wait_until(lambda: db_query(h.c, "SELECT count(*) FROM images WHERE job_id LIKE ?",
                                    (prefix + "%",))[0][0] == len(jobs), WAIT,
                   "the %d path jobs %s* stored" % (len(jobs), prefix))
        texts = set()
        for k in hostile:
            code, text, sha, width = row_of(h, prefix + k)
            texts.add(text)
            check(code == pb.ERROR_IO and text == GENERIC and sha is None and width is None,
                  "%s%s fails with the generic error and no hash: %s" %
                  (prefix, k, (code, text, sha)))
        check(texts == {GENERIC}, "%s*: one error text for every refused path" % prefix)
        code, text, sha, width = row_of(h, prefix + "good")
        check(code == 0 and sha and width and width > 0,
              "%sgood: the file beneath the root is labelled (%s, %s)" % (prefix, code, text))
        code, text, sha, width = row_of(h, prefix + "inner")
        check((code == 0 and sha) if inner_followed else (text == GENERIC and sha is None),
              "%sinner: a link within the root %s (%s, %s)" %
              (prefix, "followed" if inner_followed else "refused", code, text))
        # The FIFO did not block the worker: a normal job after all that is labelled.
        after = (prefix + "after").encode()
        submit_raw(client, [(after, b"p", b"after.jpg", h.jpeg)], request_id + 1)
        client.next("submit_ack")
        wait_until(lambda: row_of(h, after.decode()) is not None, WAIT,
                   "the job after them stored")
        check(row_of(h, after.decode())[0] == 0,
              "%s*: the worker goes on, the next job is labelled" % prefix)
        st = h.status(client, "p")
        check(st.workers == 1, "the worker is still there (%d)" % st.workers)

    confined("p-", 3, openat2)
    # The same without openat2 (ENOSYS, as before Linux 5.6): the O_NOFOLLOW walk.
    os.killpg(w2.pid, signal.SIGTERM)
    w2.wait(30)
    h.c.start("worker3", ["/usr/bin/python3", "-c", WITHOUT_OPENAT2,
                          os.path.join(h.a.bin, "facemill-worker"), "--processes", "1",
                          "--decode-only"] +
              h.c.args({"worker.path_root": root}, "worker"))
    confined("w-", 5, False)


def raw_controls(data):
    """The control bytes of data other than line ends."""
    return sorted({b for b in data if (b < 0x20 and b != 0x0a) or b == 0x7f})


def case_strings(h):
    start(h)
    client = h.client_peer()
    # A NUL inside a string: the whole Submit is refused with the reason (protobuf-c
    # would have read both ids as "a").
    submit_raw(client, [(b"a\0X", b"s", None, h.jpeg), (b"a\0Y", b"s", None, h.jpeg)], 1)
    err = client.next("error").error
    check(err.code == pb.ERROR_MALFORMED and "Job.id holds a NUL byte" in err.text,
          "ids with a NUL: the Submit is refused: %s" % err.text)
    bad = [
        (b"bad-\xff\xfe", b"s", "job id is not valid UTF-8"),
        (b"bad-\xc0\xaf", b"s", "job id is not valid UTF-8"),
        (b"ctl-\x1b[31m", b"s", "job id holds a control character"),
        (b"nl-\nFORGED", b"s", "job id holds a control character"),
        (b"c1-\xc2\x85", b"s", "job id holds a control character"),
        (b"x" * 257, b"s", "job id longer than 256 bytes"),
        (b"tag-ctl", b"s\x07", "tag holds a control character"),
        (b"tag-long", b"t" * 257, "tag longer than 256 bytes"),
    ]
    good = [(b"ok-formula", b"s", b'=HYPERLINK("http://example.com","x").jpg'),
            (b"ok-latin1", b"s", b"caf\xe9\x01.jpg"),
            ("ok-\u00e9t\u00e9".encode(), b"s", None)]
    # A client that could not read an image sends its reason (Job.unreadable), which
    # becomes the row's error text: held to the rules of ids, at an error text's length.
    bad_why = [
        (b"u-empty", b"", "unreadable job without a reason"),
        (b"u-latin1", b"caf\xe9: Permission denied", "unreadable reason is not valid UTF-8"),
        (b"u-ctl", b"x.jpg: denied\n2026-01-01 FORGED", "unreadable reason holds a control "
         "character"),
        (b"u-long", b"r" * 512, "unreadable reason longer than 511 bytes"),
    ]
    good_why = [(b"u-ok", b"s", b"x.jpg", ("unreadable", b"x.jpg: Permission denied"))]
    submit_raw(client, [(i, t, None, h.jpeg) for i, t, _ in bad] +
               [(i, b"s", None, ("unreadable", w)) for i, w, _ in bad_why] +
               [(i, t, n, h.jpeg) for i, t, n in good] + good_why, 2)
    ack = client.next("submit_ack").submit_ack
    R, A = pb.JobAck.REJECTED, pb.JobAck.ACCEPTED
    got = [(a.state, a.reason) for a in ack.jobs]
    want = ([(R, why) for _, _, why in bad] + [(R, why) for _, _, why in bad_why] +
            [(A, "")] * (len(good) + len(good_why)))
    check(got == want, "each bad job REJECTED with its reason, the good ones taken: %s" % got)
    # A worker whose name would forge log lines and reach every status.
    evil = h.peer(zmq.DEALER, "broker.workers", "worker")
    evil.send(worker_ready=pb.WorkerReady(credit=4, name="w\n2026-01-01T00:00:00Z broker"
                                          "[1] INFO  FORGED\x1b[31m"))
    e = evil.next("error").error
    check(e.code == pb.ERROR_INVALID and
          e.text == "worker name holds control character U+000A at byte 1",
          "the worker name is refused with the reason: %s" % e.text)
    h.log_has("broker", "name \"w\\x0a2026-01-01T00:00:00Z broker[1] INFO  "
              "FORGED\\x1b[31m\" holds control character")
    h.c.worker("worker", processes=1)
    taken = len(good) + len(good_why)
    wait_until(lambda: db_query(h.c, "SELECT count(*) FROM images")[0][0] == taken, WAIT,
               "the %d good jobs stored" % taken)
    check(row_of(h, "u-ok")[:2] == (4, "x.jpg: Permission denied"),
          "the unreadable job's row: an io error with its reason (%s)" % (row_of(h, "u-ok"),))
    evil.drain()
    check(not [m for m in evil.received if m.WhichOneof("body") == "job"],
          "the refused worker got no job")
    st = h.status(client, "s")
    check(st.tag_total == taken and st.workers == 1,
          "only the good jobs and the real worker are known (%d, %d)" %
          (st.tag_total, st.workers))
    for name in ("broker", "sink", "worker"):
        with open(os.path.join(h.c.dir, name + ".log"), "rb") as f:
            data = f.read()
        check(not raw_controls(data), "the %s log has no raw control character: %s" %
              (name, raw_controls(data)))
        check(not re.search(rb"(^|\n)(2026-01-01T00:00:00Z|FORGED)", data),
              "no forged line in the %s log" % name)
    fm = os.path.join(h.a.bin, "facemill")
    r = subprocess.run([fm, "submit", "--tag", "run\x1b[2J", h.c.dir] + h.c.args(),
                       capture_output=True, timeout=60)
    check(r.returncode == 2 and b"--tag: holds control character U+001B at byte 3" in
          r.stderr, "facemill submit refuses such a tag itself: %s" % r.stderr)
    out = subprocess.run([fm, "export", h.c.db], capture_output=True, timeout=60)
    check(out.returncode == 0, "export exits 0")
    import json
    rows = []
    for line in out.stdout.split(b"\n")[:-1]:
        try:
            rows.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, ValueError) as x:
            raise Failure("export line is not valid JSON (%s): %r" % (x, line))
    sources = sorted(r["source"] for r in rows)
    check(len(rows) == taken and "caf\ufffd\u0001.jpg" in sources,
          "export: %d valid JSON lines, the Latin-1 name as U+FFFD: %s" % (len(rows), sources))
    out = subprocess.run([fm, "export", "--format", "csv", h.c.db], capture_output=True,
                         timeout=60)
    lines = out.stdout.decode("utf-8", "replace").splitlines()
    check(out.returncode == 0 and
          any(l.startswith('2,"\'=HYPERLINK(""http://example.com"",""x"").jpg"') for l in lines)
          and not any(l.startswith("2,=") or l.startswith('2,"=') for l in lines),
          "CSV: the =HYPERLINK name is neutralised: %s" % lines[1:])


def make_deep(top, levels, image=None):
    """A folder levels deep under top (directory "d" in "d" ...), made relative to an
    open descriptor of the level above (the paths outgrow PATH_MAX); image bytes go to
    x.jpg at the bottom. Returns nothing; remove_deep takes it down."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        if image:
            wfd = os.open("x.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(wfd, image)
            os.close(wfd)
    finally:
        os.close(fd)


def remove_deep(top):
    """Removes what make_deep made, without recursion (shutil.rmtree would overflow
    Python's own stack): down to the bottom by descriptors, then up again."""
    fds = [os.open(top, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        while "d" in os.listdir(fds[-1]):
            fds.append(os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        while fds:
            fd = fds.pop()
            for n in os.listdir(fd):
                if n != "d":
                    os.unlink(n, dir_fd=fd)
            os.close(fd)
            if fds:
                os.rmdir("d", dir_fd=fds[-1])
    finally:
        for fd in fds:
            os.close(fd)


def case_deep_folder(h):
    start(h)
    fm = os.path.join(h.a.bin, "facemill")
    deep, shallow = os.path.join(h.c.dir, "deep"), os.path.join(h.c.dir, "shallow")
    os.makedirs(deep)
    os.makedirs(shallow)
    try:
        make_deep(deep, 3000, h.jpeg)
        r = subprocess.run([fm, "submit", "--tag", "deep", "--progress", "none", deep] +
                           h.c.args(), capture_output=True, timeout=WAIT)
        err = r.stderr.decode("utf-8", "replace")
        check(r.returncode == 1 and "folders nested more than 256 levels deep" in err,
              "3,000 levels: a clear warning, exit 1 (%d): %s" % (r.returncode, err[-600:]))
        sanitizer_clean(r.stderr, "facemill submit")
        st = h.status(h.client_peer(), "deep")
        check(st.tag_total == 0, "nothing of the deep folder was sent (%d)" % st.tag_total)
        make_deep(shallow, 100, h.jpeg)
        h.c.worker("worker", processes=1)
        r = subprocess.run([fm, "submit", "--tag", "shallow", "--progress", "none", shallow]
                           + h.c.args(), capture_output=True, timeout=240)
        check(r.returncode == 0 and db_query(h.c, "SELECT count(*) FROM images")[0][0] == 1,
              "100 levels: the image at the bottom is labelled (%d): %s" %
              (r.returncode, r.stderr.decode("utf-8", "replace")))
    finally:
        remove_deep(deep)
        remove_deep(shallow)


def broker_pid(h):
    return [p for p in h.c.procs if p.fm_name == "broker"][-1].pid


def no_sanitizer_quarantine():
    """Memory bounds are about what the broker keeps: AddressSanitizer's quarantine
    of freed blocks (256 MB by default) would count every freed buffer as kept."""
    if os.environ.get("ASAN_OPTIONS") is not None:
        os.environ["ASAN_OPTIONS"] += ":quarantine_size_mb=0"


FLOOD_HWM_MIB = 200  # the bound a 600,000-job Submit must leave the broker under


def case_flood_submit(h):
    no_sanitizer_quarantine()
    expiry = 3000
    start(h, broker_sets={"broker.worker_expiry_ms": str(expiry)})
    honest = HonestWorker(h, hand_back=True)
    honest.start()
    wait_until(lambda: len(honest.beats) >= 2, WAIT, "the honest worker's heartbeats")
    client = h.client_peer()
    sub = pb.Submit(request_id=7)
    for i in range(600000):
        sub.jobs.add(id="fl-%07d" % i, tag="fl", name="f", data=b"\xff\xd8x")
    flood = envelope(submit=sub)
    check(len(flood) > 8000000, "a Submit of 600,000 jobs, %d bytes" % len(flood))
    t0 = time.monotonic()
    client.sock.send(flood)
    err = client.next("error").error
    t1 = time.monotonic()
    check(err.code == pb.ERROR_LIMIT and "600000 jobs: more than broker.max_submit_jobs "
          "10000" in err.text, "refused whole with the reason: %s" % err.text)
    st = h.status(client, "fl")
    check(st.tag_total == 0 and st.queued == 0, "none of its jobs taken")
    # The real jobs of a keyed client, with a real worker, while the honest worker
    # keeps heartbeating.
    inp = os.path.join(h.c.dir, "in")
    make_images(h.a.bin, inp, 20)
    h.c.worker("worker", processes=1)
    p = h.c.submit([inp], "real")
    check(finish_submit(h.c, p, 240) == 0, "the keyed client's submit exits 0")
    exactly_once(h.c, 20)
    gap = honest.gap_ms(t0, max(t1, t0 + 1.0))
    honest.finish()
    hwm = proc_kib(broker_pid(h), "VmHWM") / 1024.0
    print("figures: broker VmHWM %.1f MiB, longest heartbeat gap %.0f ms during the "
          "flood" % (hwm, gap), flush=True)
    check(hwm < FLOOD_HWM_MIB, "broker peak memory %.1f MiB < %d MiB" % (hwm, FLOOD_HWM_MIB))
    check(gap < expiry, "the longest heartbeat gap %.0f ms < worker_expiry_ms %d" %
          (gap, expiry))
    check("silent for" not in read_log(h.c, "broker"), "no worker expired")


def case_big_bodies(h):
    no_sanitizer_quarantine()
    start(h)
    client = h.client_peer()
    h.status(client)  # connected and answered: the baseline includes the connection
    pid = broker_pid(h)
    before = proc_kib(pid, "VmRSS")
    # A real JPEG padded to 3 MB (a decoder stops at its end marker): the worker
    # labels it, so the run can complete.
    body = h.jpeg + b"\0" * (3 * 1024 * 1024 - len(h.jpeg))
    for k in range(20):
        sub = pb.Submit(request_id=100 + k)
        sub.jobs.add(id="bb-%02d" % k, tag="bb", name="bb-%02d.jpg" % k, data=body)
        client.send(submit=sub)
        ack = client.next("submit_ack", pred=lambda e: e.submit_ack.request_id == 100 + k)
        check(ack.submit_ack.jobs[0].state == pb.JobAck.ACCEPTED, "3 MB job %d accepted" % k)
    growth = (proc_kib(pid, "VmRSS") - before) / 1024.0
    print("figures: broker VmRSS grew %.1f MiB for 60 MiB of bodies" % growth, flush=True)
    check(growth < 30, "broker memory grew %.1f MiB (< 30 MiB) for 60 MiB of queued bodies"
          % growth)
    h.c.worker("worker", processes=1)
    wait_until(lambda: h.status(client, "bb").tag_committed == 20, 240, "20 commits")
    exactly_once(h.c, 20)


def case_damaged_body(h):
    """An image's bytes changed in the broker's journal (a bit flip on disk, which
    SQLite's own checks do not see): the worker finds that the bytes are not those the
    client sent (Job.data_sha256) and answers an io error for that image, which is never
    labelled; the job beside it is labelled as usual."""
    c = h.c
    start(h)
    client = h.client_peer()
    body = h.jpeg + bytes(range(256)) * 8  # a tail to flip a byte in
    digest = hashlib.sha256(body).digest()
    sub = pb.Submit(request_id=1)
    for i in ("db-ok", "db-flipped"):
        sub.jobs.add(id=i, tag="db", name=i + ".jpg", data=body, data_sha256=digest)
    client.send(submit=sub)
    ack = client.next("submit_ack", pred=lambda e: e.submit_ack.request_id == 1)
    check(all(j.state == pb.JobAck.ACCEPTED for j in ack.submit_ack.jobs), "2 jobs accepted")
    stop_broker(c)
    journal = os.path.join(c.dir, "journal.db")
    with sqlite3.connect(journal) as db:
        (blob,) = db.execute("SELECT body FROM jobs WHERE id = 'db-flipped'").fetchone()
        at = bytes(blob).find(bytes(range(256)))
        check(at > 0, "the image's bytes are in the journal row")
        flipped = bytearray(blob)
        flipped[at + 100] ^= 0x10
        db.execute("UPDATE jobs SET body = ? WHERE id = 'db-flipped'", (bytes(flipped),))
    c.broker()
    h.log_has("broker", "2 jobs not committed, re-queued")
    c.worker("worker", processes=1)
    wait_until(lambda: db_query(c, "SELECT count(*) FROM images")[0][0] == 2, WAIT,
               "2 rows")
    rows = {r[0]: r[1:] for r in db_query(c, "SELECT job_id, error_code, error_text, sha256 "
                                             "FROM images")}
    check(rows["db-ok"][0] == 0, "the intact job is labelled (%s)" % (rows["db-ok"],))
    code, text, sha = rows["db-flipped"]
    check(code == 4 and "not those the client sent" in (text or ""),
          "the damaged one is an io error saying so: %s %s" % (code, text))


def case_journal_recover(h):
    c = h.c
    start(h)
    client = h.client_peer()
    ids = ["jr-%03d" % i for i in range(300)]
    body = h.jpeg + b"\0" * 2000  # a few jobs per journal page
    big = h.jpeg + b"\0" * 150000  # every seventh: a chain of overflow pages
    for first in range(0, len(ids), 50):
        sub = pb.Submit(request_id=first + 1)
        for k, i in enumerate(ids[first:first + 50]):
            sub.jobs.add(id=i, tag="jr", name=i + ".jpg", data=big if k % 7 == 3 else body)
        client.send(submit=sub)
        ack = client.next("submit_ack", pred=lambda e: e.submit_ack.request_id == first + 1)
        check(all(j.state == pb.JobAck.ACCEPTED for j in ack.submit_ack.jobs),
              "jobs %d.. accepted" % first)
    stop_broker(c)
    journal = os.path.join(c.dir, "journal.db")
    check(not os.path.exists(journal + "-wal") or os.path.getsize(journal + "-wal") == 0,
          "the journal's WAL is checkpointed at the stop")
    size = os.path.getsize(journal)
    cut = size * 2 // 3 + 1000  # mid-page: pages are 4096 bytes
    os.truncate(journal, cut)
    refused = c.broker()
    check(refused.wait(WAIT) == 1, "the broker refuses to start on the truncated journal")
    text = read_log(c, "broker")
    damaged = [ln for ln in text.splitlines() if "is damaged" in ln][-1:]
    check(damaged and "facemill-broker --recover --set broker.journal=%s`" %
          os.path.abspath(journal) in damaged[0],
          "its one line names --recover with the journal's absolute path: %s" % damaged)
    argv = [os.path.join(h.a.bin, "facemill-broker")] + c.args(None, "broker") + ["--recover"]
    # a journal that is not there (a relative path from another directory, a
    # configuration without the service's path) is an error, and no new file
    missing = os.path.join(c.dir, "elsewhere", "journal.db")
    os.makedirs(os.path.dirname(missing))
    rc = run_until_exit(argv + ["--set", "broker.journal=" + missing],
                        os.path.join(c.dir, "recover.log"))
    with open(os.path.join(c.dir, "recover.log")) as f:
        text = f.read()
    check(rc == 1 and "no journal at %s" % missing in text and "nothing to recover" in text,
          "--recover of a missing journal exits 1 and says so: %s" % text[-300:])
    check(os.listdir(os.path.dirname(missing)) == [], "and creates no journal there")
    rc = run_until_exit(argv, os.path.join(c.dir, "recover.log"))
    with open(os.path.join(c.dir, "recover.log")) as f:
        text = f.read()
    m = re.search(r"recovered: (\d+) jobs not yet committed and (\d+) committed ids kept "
                  r"in a new journal; the damaged file is at (\S+)\.", text)
    check(rc == 0 and m, "--recover exits 0 and says what it kept: %s" % text[-400:])
    kept = int(m.group(1))
    check(0 < kept < len(ids), "it kept %d of %d jobs (the truncated pages' are lost)" %
          (kept, len(ids)))
    check(os.path.exists(m.group(3)) and os.path.getsize(m.group(3)) == cut,
          "the damaged file is kept aside as it was")
    # every job a look-up row by row can read is kept (the scans once stopped at the
    # first unreadable row and lost the rest)
    old_db = sqlite3.connect(m.group(3))
    old_db.execute("PRAGMA writable_schema=ON")
    readable = 0
    for rowid in range(1, len(ids) + 1):
        try:
            row = old_db.execute("SELECT length(body) FROM jobs WHERE rowid = ? AND "
                                 "committed = 0", (rowid,)).fetchone()
            readable += row is not None and row[0] is not None
        except sqlite3.DatabaseError:
            pass
    old_db.close()
    check(kept >= readable, "it kept every job a row-by-row look-up reads (%d, %d)" %
          (kept, readable))
    rc = run_until_exit(argv, os.path.join(c.dir, "recover.log"))
    with open(os.path.join(c.dir, "recover.log")) as f:
        check(rc == 0 and "passes its check: nothing to recover" in f.read(),
              "a second --recover finds nothing to do")
    c.broker()
    h.log_has("broker", "CurveZMQ on every socket", count=2)
    h.log_has("broker", "%d jobs not committed, re-queued" % kept)
    h.c.worker("worker", processes=1)
    client = h.client_peer()
    wait_until(lambda: h.status(client, "jr").tag_committed == kept, 240,
               "the %d kept jobs committed" % kept)
    st = h.status(client, "jr")
    check(st.tag_total == kept, "the recovered journal counts %d jobs of tag jr" % kept)
    exactly_once(c, kept)


def mount_tmpfs(d, size):
    """A tmpfs of size at d, or Skip when this cannot be done here."""
    if os.geteuid() != 0:
        raise Skip("the full disk is a tmpfs mounted for the test, which needs root")
    os.makedirs(d)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", d],
                       capture_output=True, timeout=30)
    if r.returncode != 0:
        raise Skip("mount -t tmpfs refused here: %s" % r.stderr.decode().strip())


def fill_disk(path):
    """Writes path until the filesystem is full; returns the bytes written."""
    n = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                n += f.write(chunk)
            except OSError:
                break
        small = b"\0" * 512
        while True:  # the last partial block
            try:
                n += f.write(small)
            except OSError:
                return n


def case_lost_journal(h):
    """A broker whose journal is replaced while a `facemill submit` waits (a journal
    moved away, or recovered in part) lost jobs that will never be committed: the
    client says so and exits 3, instead of counting them committed; the same submit
    again labels every image."""
    c = h.c
    start(h)
    fm = os.path.join(h.a.bin, "facemill")
    inp = os.path.join(c.dir, "lost")
    os.makedirs(inp)
    for i in range(12):
        with open(os.path.join(inp, "l%02d.jpg" % i), "wb") as f:
            f.write(h.jpeg + bytes([i]))
    with open(os.path.join(inp, "x-broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff not a JPEG after all")
    log = open(os.path.join(c.dir, "submit.log"), "wb")
    sub = subprocess.Popen([fm, "submit", "--tag", "lost", "--progress", "none", inp] +
                           c.args(), stdout=log, stderr=subprocess.STDOUT)
    client = h.client_peer()
    wait_until(lambda: h.status(client, "lost").tag_total == 13, 60,
               "the broker holds the 13 jobs (no worker runs)")
    stop_broker(c)
    journal = os.path.join(c.dir, "journal.db")
    for sfx in ("", "-wal", "-shm"):
        if os.path.exists(journal + sfx):
            os.rename(journal + sfx, journal + ".away" + sfx)
    c.broker()
    try:
        rc = sub.wait(120)
    except subprocess.TimeoutExpired:
        sub.kill()
        rc = sub.wait()
    log.close()
    with open(os.path.join(c.dir, "submit.log"), "rb") as f:
        text = f.read().decode("utf-8", "replace")
    check(rc == 3 and "fewer than it had" in text and "13 committed" not in text,
          "submit says the broker lost jobs, exit 3 (%d): %s" % (rc, text[-500:]))
    h.c.worker("worker", processes=1)
    r = subprocess.run([fm, "submit", "--tag", "lost", "--progress", "none", inp] + c.args(),
                       capture_output=True, timeout=240)
    n = db_query(c, "SELECT count(*) FROM images WHERE tag = 'lost'")[0][0]
    check(r.returncode == 1 and n == 13 and b"13 committed, 0 already stored, 1 failed" in
          r.stderr, "submitted again, all 13 are stored, the broken one failed (%d, %d rows: "
          "%s)" % (r.returncode, n, r.stderr.decode()[-300:]))
    # once more: every job is answered as stored, and the failure still counts
    r = subprocess.run([fm, "submit", "--tag", "lost", "--progress", "none", inp] + c.args(),
                       capture_output=True, timeout=240)
    check(r.returncode == 1 and b"0 committed, 13 already stored, 1 failed" in r.stderr,
          "a third submit: all already stored, its failure still said, exit 1 (%d: %s)" %
          (r.returncode, r.stderr.decode()[-300:]))


def case_journal_full_start(h):
    """A journal that cannot be checked because its disk is full is not damaged: the
    broker exits 1 saying so (not naming --recover), --recover leaves it as it was,
    and once there is space the broker starts on it with every job."""
    c = h.c
    disk = os.path.join(c.dir, "disk")
    mount_tmpfs(disk, "8m")
    h.umount = disk
    journal = os.path.join(disk, "journal.db")
    c.sets.update({"broker.journal": journal})
    start(h)
    client = h.client_peer()
    sub = pb.Submit(request_id=1)
    for i in range(20):
        sub.jobs.add(id="jf-%02d" % i, tag="jf", name="jf-%02d.jpg" % i, data=h.jpeg)
    client.send(submit=sub)
    ack = client.next("submit_ack", pred=lambda e: e.submit_ack.request_id == 1)
    check(all(j.state == pb.JobAck.ACCEPTED for j in ack.submit_ack.jobs), "20 jobs accepted")
    stop_broker(c)
    with open(journal, "rb") as f:
        before = f.read()
    filler = os.path.join(disk, "filler")
    fill_disk(filler)
    refused = c.broker()
    check(refused.wait(WAIT) == 1, "the broker does not start on the full disk")
    text = read_log(c, "broker")
    last = [ln for ln in text.splitlines() if "ERROR" in ln][-1:]
    check(last and "is damaged" not in last[0] and "--recover" not in last[0] and
          ("full" in last[0] or "I/O" in last[0]),
          "its one line says the disk, not damage, and does not name --recover: %s" % last)
    argv = [os.path.join(h.a.bin, "facemill-broker")] + c.args(None, "broker") + ["--recover"]
    rc = run_until_exit(argv, os.path.join(c.dir, "recover.log"))
    with open(os.path.join(c.dir, "recover.log")) as f:
        text = f.read()
    with open(journal, "rb") as f:
        after = f.read()
    check(rc == 1 and "nothing recovered" in text and after == before and
          not [n for n in os.listdir(disk) if ".damaged-" in n],
          "--recover on the full disk changes nothing (%d: %s)" % (rc, text[-300:]))
    os.unlink(filler)
    c.broker()
    h.log_has("broker", "20 jobs not committed, re-queued")


def case_disk_full(h):
    c = h.c
    disk = os.path.join(c.dir, "disk")
    mount_tmpfs(disk, "16m")
    h.umount = disk
    c.db = os.path.join(disk, "results.db")
    c.sets.update({"broker.journal": os.path.join(disk, "journal.db"), "sink.db": c.db,
                   "broker.job_timeout_ms": "8000"})
    start(h)
    client = h.client_peer()
    body = h.jpeg + b"\0" * 20000
    first = ["df-%02d" % i for i in range(40)]
    sub = pb.Submit(request_id=1)
    for i in first:
        sub.jobs.add(id=i, tag="df", name=i + ".jpg", data=body)
    client.send(submit=sub)
    ack = client.next("submit_ack", pred=lambda e: e.submit_ack.request_id == 1)
    check(all(j.state == pb.JobAck.ACCEPTED for j in ack.submit_ack.jobs),
          "40 jobs accepted before the disk fills")
    filler = os.path.join(disk, "filler")
    print("filler: %d bytes" % fill_disk(filler), flush=True)
    # A Submit on the full disk: SlowDown, nothing taken, the broker lives on.
    more = ["df-%02d" % i for i in range(40, 60)]
    sub = pb.Submit(request_id=2)
    for i in more:
        sub.jobs.add(id=i, tag="df", name=i + ".jpg", data=body)
    client.send(submit=sub)
    client.next("slow_down", pred=lambda e: e.slow_down.request_id == 2)
    h.log_has("broker", "disk full")
    first_full = time.monotonic()
    # Workers run on the full disk: the sink cannot store, says so, and survives.
    h.c.worker("worker", processes=1)
    h.log_has("sink", "disk full")
    wait_until(lambda: h.status(client, "df").sink_disk_full, WAIT,
               "the broker's status says the sink's disk is full")
    st = h.status(client, "df")
    check(st.journal_disk_full, "the status says the journal's disk is full")
    out = subprocess.run([os.path.join(h.a.bin, "facemill"), "status"] + c.args(),
                         capture_output=True, timeout=60).stdout.decode()
    check("disk full:  the broker's journal" in out and "disk full:  the sink's results "
          "database" in out, "facemill status shows both full disks:\n%s" % out)
    check(all(p.poll() is None for p in c.procs if p.fm_name in ("broker", "sink")),
          "broker and sink still run on the full disk")
    os.unlink(filler)
    # Space again: the Submit sent again is taken, and everything completes once.
    deadline = time.monotonic() + 240
    rid, got = 3, None
    while time.monotonic() < deadline:
        sub.request_id = rid
        client.send(submit=sub)
        got = None
        end = time.monotonic() + 10
        while got is None and time.monotonic() < end:
            for m in client.drain():
                kind = m.WhichOneof("body")
                if kind == "submit_ack" and m.submit_ack.request_id == rid:
                    got = "ack"
                elif kind == "slow_down" and m.slow_down.request_id == rid:
                    got = "slow"
            time.sleep(0.05)
        if got == "ack":
            break
        rid += 1
    check(got == "ack", "the second Submit is taken once space returns")
    h.log_has("broker", "space again")
    wait_until(lambda: h.status(client, "df").tag_committed == 60, 240, "60 commits")
    st = h.status(client, "df")
    check(not st.journal_disk_full and not st.sink_disk_full, "no disk full any more")
    exactly_once(c, 60)
    failed = db_query(c, "SELECT count(*) FROM images WHERE error_code != 0")[0][0]
    check(failed == 0, "no job failed for the full disk (%d)" % failed)
    check(all(p.poll() is None for p in c.procs if p.fm_name in ("broker", "sink")),
          "broker and sink ran throughout")
    # The disk fills again within the minute, after the journal took writes: a new
    # episode, logged when it begins; a Submit again within it adds no line.
    line = "journal.db: disk full ("
    check(read_log(c, "broker").count(line) == 1, "one journal disk-full line so far")
    journal = os.path.join(disk, "journal.db")
    fill_disk(filler)
    # more than the write-ahead log can take in the pages it has already
    wal = os.path.getsize(journal + "-wal") if os.path.exists(journal + "-wal") else 0
    again = pb.Submit(request_id=rid + 1)
    for i in range(60, 61 + (wal + (1 << 20)) // len(body)):
        again.jobs.add(id="df-%04d" % i, tag="df2", name="df-%04d.jpg" % i, data=body)
    client.send(submit=again)
    client.next("slow_down", pred=lambda e: e.slow_down.request_id == rid + 1)
    h.log_has("broker", line, count=2)
    check(time.monotonic() - first_full < 60, "the second episode came within the minute "
          "(%.0f s after the first)" % (time.monotonic() - first_full))
    again.request_id = rid + 2
    client.send(submit=again)
    client.next("slow_down", pred=lambda e: e.slow_down.request_id == rid + 2)
    time.sleep(1)
    n = read_log(c, "broker").count(line)
    check(n == 2, "a Submit within the same episode adds no line (%d lines)" % n)
    os.unlink(filler)


def case_idle_connections(h):
    """Started with a soft limit of 64 open files (hard 4096), the broker raises it to
    the hard limit; 80 idle TCP connections to its client port then leave it serving a
    keyed client (libzmq out of descriptors stops accepting and spins)."""
    import resource
    import socket
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4096:
        raise Skip("the hard limit of open files here is %d, under 4096" % hard)
    if not shutil.which("prlimit"):
        raise Skip("no prlimit (util-linux) to start the broker with a low limit")
    h.c.sink()
    h.c.start("broker", ["prlimit", "--nofile=64:4096",
                         os.path.join(h.c.bin, "facemill-broker")] + h.c.args(None, "broker"))
    h.log_has("broker", "CurveZMQ on every socket")
    h.log_has("sink", "storing results")
    with open("/proc/%d/limits" % broker_pid(h)) as f:
        line = [x for x in f if x.startswith("Max open files")][0].split()
    check(line[3:5] == ["4096", "4096"], "the broker raised its soft limit: %s" % line[3:5])
    host, port = h.c.endpoints["broker.clients"][len("tcp://"):].rsplit(":", 1)
    idle = []
    try:
        for _ in range(80):
            idle.append(socket.create_connection((host, int(port)), timeout=10))
        client = h.client_peer()
        st = h.status(client, "idle")
        check(st.tag_total == 0, "with 80 idle connections open the broker answers a keyed "
              "client's status")
        h.submit(client, ["idle-0"], "idle")
        h.c.worker("worker", processes=1)
        wait_until(lambda: h.status(client, "idle").tag_committed == 1, WAIT,
                   "a job submitted beside them committed")
    finally:
        for sck in idle:
            sck.close()


CASES = {
    "idle_connections": case_idle_connections,
    "disk_full": case_disk_full,
    "journal_recover": case_journal_recover,
    "damaged_body": case_damaged_body,
    "journal_full_start": case_journal_full_start,
    "refused_told": case_refused_told,
    "lost_journal": case_lost_journal,
    "flood_submit": case_flood_submit,
    "big_bodies": case_big_bodies,
    "unkeyed_worker": case_unkeyed_worker,
    "client_as_worker": case_client_as_worker,
    "forged_commit": case_forged_commit,
    "forged_result": case_forged_result,
    "revoked_key": case_revoked_key,
    "max_faces": case_max_faces,
    "credit": case_credit,
    "exposed_bind": case_exposed_bind,
    "keygen": case_keygen,
    "paths": case_paths,
    "strings": case_strings,
    "deep_folder": case_deep_folder,
}


def main():
    global zmq, pb
    a = case_args(CASES)
    try:
        import zmq as zmq_module
        import zmq.auth  # noqa: F401
        import google.protobuf  # noqa: F401
    except ImportError as e:
        print("skip: %s (install python3-zmq python3-protobuf)" % e)
        return SKIP
    zmq = zmq_module
    if not zmq.has("curve"):
        print("skip: libzmq without CURVE")
        return SKIP
    if not os.path.exists(os.path.join(a.pydir, "facemill_pb2.py")):
        print("skip: no generated facemill_pb2.py in %s (protoc missing?)" % a.pydir)
        return SKIP
    sys.path.insert(0, a.pydir)
    import facemill_pb2
    pb = facemill_pb2
    tmp = tempfile.mkdtemp(prefix="fmhost.", dir="/tmp")  # short: ipc paths are limited
    c = Cluster(a.bin, a.src, tmp)
    c.sets["log.level"] = "info"
    hostile = []

    def body():
        h = Hostile(c, a)
        hostile.append(h)
        h.jpeg = jpeg_bytes(a, tmp)
        CASES[a.case](h)

    def cleanup():
        for h in hostile:
            h.close()
            if getattr(h, "umount", None):
                subprocess.run(["umount", h.umount], capture_output=True, timeout=60)

    code = run_case(c, body, a.keep, cleanup)
    return code


if __name__ == "__main__":
    sys.exit(main())
