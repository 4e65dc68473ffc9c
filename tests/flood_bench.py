#!/usr/bin/python3
"""flood_bench.py - what floods cost the broker: a benchmark run by hand, not a test.

For each flood case it starts a fresh secured cluster (real facemill-broker and
facemill-sink, keys from `facemill keygen`, the harness of tests/test_hostile.py),
connects an honest worker written here (a pyzmq DEALER with the worker's key that
heartbeats every broker.heartbeat_ms and records when the broker's heartbeats
arrive), runs the flood from a keyed client (or the sink's key) and prints one table:

  case            what was sent
  broker_hwm_MiB  the broker's peak resident memory (VmHWM in /proc/PID/status)
  rss_growth_MiB  VmRSS after the flood minus VmRSS before it
  hb_gap_ms       the longest gap between two broker heartbeats the honest worker saw
                  (broker.heartbeat_ms is 200; the broker drops a worker it has not
                  heard from for broker.worker_expiry_ms, 5000 here)
  flood_s         from the first message of the flood to its last answer
  expired         whether the broker dropped the honest worker for its silence
  answer          how the broker answered

Cases: submit600k (one Submit of 600,000 jobs), bodies3mb (20 jobs of 3 MB, one
Submit each), status_storm (200 StatusRequests for a tag of 100,000 jobs), commit60k
(a Commit of 60,000 ids from the sink's key, for queued jobs, with a token never
dispatched), commit60k_real (a Commit of 60,000 jobs really dispatched, with their
tokens: every one is committed).

  /usr/bin/python3 tests/flood_bench.py [--bin build/bin] [--case NAME]...
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_hostile  # noqa: E402
from test_service import Cluster, read_log, wait_until  # noqa: E402

HEARTBEAT_MS = 200
EXPIRY_MS = 5000


def submit_ids(h, client, ids, tag, data, rid):
    pb = test_hostile.pb
    sub = pb.Submit(request_id=rid)
    for i in ids:
        sub.jobs.add(id=i, tag=tag, name=i, data=data)
    client.send(submit=sub)


def answer_of(client, rid, timeout):
    """The answer to request rid: "ack" (with counts of states), "slow_down" or the
    text of an Error, or "none" after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not client.sock.poll(100):
            continue
        e = test_hostile.parse(client.sock.recv())
        kind = e.WhichOneof("body")
        if kind == "submit_ack" and e.submit_ack.request_id == rid:
            states = {}
            for j in e.submit_ack.jobs:
                states[j.state] = states.get(j.state, 0) + 1
            names = {0: "accepted", 1: "duplicate", 2: "committed", 3: "rejected"}
            return "ack " + ",".join("%s %d" % (names.get(k, k), v)
                                     for k, v in sorted(states.items()))
        if kind == "slow_down" and e.slow_down.request_id == rid:
            return "slow_down"
        if kind == "error":
            return "error: " + e.error.text[:60]
    return "none"


def fill(h, client, n, tag, chunk=5000):
    """n small jobs of tag, in Submits of chunk, each acknowledged."""
    done = 0
    rid = 1000
    while done < n:
        ids = ["%s-%07d" % (tag, i) for i in range(done, min(n, done + chunk))]
        rid += 1
        submit_ids(h, client, ids, tag, b"\xff\xd8tiny", rid)
        a = answer_of(client, rid, 300)
        if not a.startswith("ack"):
            raise RuntimeError("filling %s: %s" % (tag, a))
        done += len(ids)


def prep_submit600k(h, client):
    # Built before the flood: serializing holds Python's lock, which would delay
    # the honest worker's thread and show as a gap the broker did not cause.
    pb = test_hostile.pb
    sub = pb.Submit(request_id=7)
    for i in range(600000):
        sub.jobs.add(id="s-%07d" % i, tag="s", name="s", data=b"\xff\xd8x")
    h.flood_bytes = test_hostile.envelope(submit=sub)


def case_submit600k(h, client):
    client.sock.send(h.flood_bytes)
    return answer_of(client, 7, 600)


def case_bodies3mb(h, client):
    body = os.urandom(3 * 1024 * 1024)
    answers = []
    for k in range(20):
        submit_ids(h, client, ["b-%02d" % k], "b", body, 100 + k)
        answers.append(answer_of(client, 100 + k, 300))
    return "%d of 20 acked" % sum(a.startswith("ack") for a in answers)


def prep_status_storm(h, client):
    fill(h, client, 100000, "st")


def case_status_storm(h, client):
    pb = test_hostile.pb
    for k in range(200):
        client.send(status_request=pb.StatusRequest(tag="st", request_id=5000 + k))
    got = 0
    deadline = time.monotonic() + 600
    while got < 200 and time.monotonic() < deadline:
        if client.sock.poll(100):
            e = test_hostile.parse(client.sock.recv())
            if e.WhichOneof("body") == "status_reply":
                got += 1
    return "%d of 200 replies" % got


def prep_commit60k(h, client):
    fill(h, client, 60000, "c")


def case_commit60k(h, client):
    pb = test_hostile.pb
    zmq = test_hostile.zmq
    forger = h.peer(zmq.DEALER, "sink.commits", "sink")
    token = os.urandom(16)
    forger.send(commit=pb.Commit(entries=[
        pb.CommitEntry(job_id="c-%07d" % i, token=token, stored=True, failed=False)
        for i in range(60000)] + [pb.CommitEntry(job_id="c-0000000", token=token,
                                                  stored=False)]))
    try:
        forger.next("commit_reply", timeout=600)
        return "commit_reply"
    except test_hostile.Failure:
        return "none"


def prep_commit60k_real(h, client):
    """60,000 jobs, 59,999 of them dispatched for real to a keyed worker written here,
    which reports each done: their tokens are the broker's own, so a Commit of them
    counts."""
    fill(h, client, 60000, "r")
    zmq, pb = test_hostile.zmq, test_hostile.pb
    w = h.peer(zmq.DEALER, "broker.workers", "worker")
    w.send(worker_ready=pb.WorkerReady(credit=64, name="taker"))
    h.tokens = {}
    deadline = time.monotonic() + 600
    next_hb = 0.0
    # The honest worker keeps the one job it is sent: 59,999 come here.
    while len(h.tokens) < 59999 and time.monotonic() < deadline:
        if time.monotonic() >= next_hb:
            w.send(heartbeat=pb.Heartbeat(credit=64, name="taker"))
            next_hb = time.monotonic() + HEARTBEAT_MS / 1000.0
        if w.sock.poll(50):
            e = test_hostile.parse(w.sock.recv())
            if e.WhichOneof("body") == "job":
                h.tokens[e.job.id] = e.job.token
                w.send(job_done=pb.JobDone(job_id=e.job.id, outcome=pb.JobDone.DONE))
    w.send(worker_bye=pb.WorkerBye())
    sink = h.peer(zmq.DEALER, "sink.commits", "sink")
    h.flood_bytes = test_hostile.envelope(commit=pb.Commit(entries=[
        pb.CommitEntry(job_id=i, token=t, stored=True, failed=False)
        for i, t in h.tokens.items()] + [pb.CommitEntry(job_id="r-0000000", token=b"x" * 16,
                                                         stored=False)]))
    h.flood_sink = sink


def case_commit60k_real(h, client):
    h.flood_sink.sock.send(h.flood_bytes)
    try:
        h.flood_sink.next("commit_reply", timeout=600)
    except test_hostile.Failure:
        return "no commit_reply"
    end = time.monotonic() + 600
    while time.monotonic() < end:
        st = h.status(client, "r")
        if st.tag_committed >= len(h.tokens):
            return "%d of %d committed" % (st.tag_committed, len(h.tokens))
        time.sleep(0.2)
    return "not committed"


CASES = [
    ("submit600k", prep_submit600k, case_submit600k),
    ("bodies3mb", None, case_bodies3mb),
    ("status_storm", prep_status_storm, case_status_storm),
    ("commit60k", prep_commit60k, case_commit60k),
    ("commit60k_real", prep_commit60k_real, case_commit60k_real),
]


def run_case(a, name, prep, flood):
    tmp = tempfile.mkdtemp(prefix="fmflood.", dir="/tmp")
    c = Cluster(a.bin, a.src, tmp)
    c.sets.update({"log.level": "info", "broker.heartbeat_ms": str(HEARTBEAT_MS),
                   "broker.job_timeout_ms": "600000", "broker.fsync": "off",
                   "broker.max_queue": "1000000"})
    h = None
    try:
        h = test_hostile.Hostile(c, a)
        c.sets["broker.worker_expiry_ms"] = str(EXPIRY_MS)
        test_hostile.start(h)
        bpid = [p for p in c.procs if p.fm_name == "broker"][0].pid
        client = h.client_peer()
        worker = test_hostile.HonestWorker(h, interval_ms=HEARTBEAT_MS)
        worker.start()
        wait_until(lambda: len(worker.beats) >= 2, 60, "the honest worker's heartbeats")
        if prep:
            prep(h, client)
        time.sleep(3 * HEARTBEAT_MS / 1000.0)  # a quiet baseline for RSS
        rss0 = test_hostile.proc_kib(bpid, "VmRSS")
        t0 = time.monotonic()
        answer = flood(h, client)
        t1 = time.monotonic()
        # Heartbeats after the answer show the loop is free again.
        time.sleep(2 * HEARTBEAT_MS / 1000.0)
        hwm = test_hostile.proc_kib(bpid, "VmHWM")
        rss1 = test_hostile.proc_kib(bpid, "VmRSS")
        worker.finish()
        expired = "worker honest silent for" in read_log(c, "broker")
        return (name, hwm / 1024.0, (rss1 - rss0) / 1024.0, worker.gap_ms(t0, t1 + 0.4),
                t1 - t0, "yes" if expired else "no", answer)
    finally:
        c.stop_all()
        if h:
            h.close()
        if a.keep:
            print("files kept in", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/bin")
    ap.add_argument("--src", default=".")
    ap.add_argument("--pydir", default=None)
    ap.add_argument("--case", action="append", choices=[n for n, _, _ in CASES])
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)
    a.src = os.path.abspath(a.src)
    a.pydir = a.pydir or os.path.join(os.path.dirname(a.bin), "python")
    import zmq
    sys.path.insert(0, a.pydir)
    import facemill_pb2
    test_hostile.zmq, test_hostile.pb = zmq, facemill_pb2
    print("%-14s %14s %14s %10s %8s %7s  %s" % ("case", "broker_hwm_MiB", "rss_growth_MiB",
                                                "hb_gap_ms", "flood_s", "expired", "answer"),
          flush=True)
    for name, prep, flood in CASES:
        if a.case and name not in a.case:
            continue
        print("%-14s %14.1f %14.1f %10.0f %8.2f %7s  %s" % run_case(a, name, prep, flood),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
