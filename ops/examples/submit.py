#!/usr/bin/env python3
"""submit.py - an example facemill client in Python: submits every JPEG of a folder to
a broker and waits until all results are stored by the sink.

It shows the public protocol (proto/README.md) from a program that is not facemill:
one DEALER socket, one Envelope per frame, a Submit waiting for its SubmitAck,
SlowDown honoured, Commit notices counted, StatusRequest as the fallback when commit
notices are lost (e.g. the broker restarted). Against a broker with keys (CurveZMQ),
--cert names this client's secret certificate (one the broker admits: its public
half is in the broker's security.clients_dir) and --broker-key the broker's public
certificate; both are the files `facemill keygen` (or zmq.auth) writes.

Needs Debian's python3-zmq and python3-protobuf, and the Python code generated from
proto/facemill.proto: an install puts facemill_pb2.py beside this script
(share/facemill/examples/), the build writes it to BUILD/python/facemill_pb2.py, or
run `protoc --python_out=DIR proto/facemill.proto` and pass --proto-dir DIR.

    python3 ops/examples/submit.py --endpoint tcp://broker:5570 \\
        --proto-dir build/python --tag myrun photos/
    python3 ops/examples/submit.py --endpoint tcp://broker:5570 \\
        --cert keys/client.key_secret --broker-key keys/broker.key photos/

Results are then read from the sink's database: `facemill export RESULTS.db`.
Exit 0 when every image was labelled, 1 when some failed, 3 when it gave up.
"""
import argparse
import hashlib
import os
import sys
import time

PROTOCOL_MAJOR, PROTOCOL_MINOR = 1, 1
IMAGE_EXT = (".jpg", ".jpeg", ".jpe", ".jfif", ".png")


def find_images(folder):
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXT):
                yield os.path.join(root, name)


def envelope(pb, **body):
    e = pb.Envelope(version_major=PROTOCOL_MAJOR, version_minor=PROTOCOL_MINOR)
    for k, v in body.items():
        getattr(e, k).CopyFrom(v)
    return e.SerializeToString()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--endpoint", default="tcp://127.0.0.1:5570", help="broker.clients")
    here = os.path.dirname(os.path.abspath(__file__))
    beside = os.path.exists(os.path.join(here, "facemill_pb2.py"))
    ap.add_argument("--proto-dir",
                    default=here if beside else os.path.join(here, "..", "..", "build", "python"),
                    help="where facemill_pb2.py is (default: beside this script when "
                         "installed, else the source tree's build/python)")
    ap.add_argument("--tag", default="python-%d" % os.getpid(), help="run name")
    ap.add_argument("--chunk", type=int, default=32, help="jobs per Submit")
    ap.add_argument("--timeout", type=float, default=600, help="give up after seconds")
    ap.add_argument("--cert", help="this client's secret certificate (NAME.key_secret): "
                                   "connect with CurveZMQ")
    ap.add_argument("--broker-key", help="the broker's public certificate (NAME.key); "
                                         "needed with --cert")
    a = ap.parse_args()
    if bool(a.cert) != bool(a.broker_key):
        ap.error("--cert and --broker-key go together")

    sys.path.insert(0, a.proto_dir)
    try:
        import zmq
        import facemill_pb2 as pb
    except ImportError as e:  # google.protobuf comes in through facemill_pb2
        sys.exit("submit.py: %s: it needs Debian's python3-zmq and python3-protobuf "
                 "(apt-get install python3-zmq python3-protobuf) and facemill_pb2.py "
                 "(--proto-dir)" % e)

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if a.cert:
        # CurveZMQ: our key pair, and the broker's public key we expect it to prove.
        # A broker that does not admit our key fails the handshake silently: no
        # answer ever comes (its log names the refused key).
        import zmq.auth
        public, secret = zmq.auth.load_certificate(a.cert)
        if secret is None:
            sys.exit("%s is a public certificate; --cert needs NAME.key_secret" % a.cert)
        server, _ = zmq.auth.load_certificate(a.broker_key)
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_serverkey = server
    sock.connect(a.endpoint)

    paths = list(find_images(a.folder))
    pending = set()      # accepted, commit not seen yet
    committed = failed = 0
    deadline = time.monotonic() + a.timeout

    def handle(msg):
        """Applies one broker message; returns it parsed."""
        nonlocal committed, failed
        e = pb.Envelope()
        e.ParseFromString(msg)
        if e.version_major != PROTOCOL_MAJOR:
            sys.exit("broker speaks protocol %d.%d" % (e.version_major, e.version_minor))
        kind = e.WhichOneof("body")
        if kind == "commit":
            for ce in e.commit.entries:
                if ce.job_id in pending:
                    pending.discard(ce.job_id)
                    committed += 1
                    failed += ce.failed
        elif kind == "error":
            print("broker error %d: %s" % (e.error.code, e.error.text), file=sys.stderr)
        return e

    def wait_reply(request_id, kinds, timeout_s):
        """Handles messages until one of kinds answers request_id; None on timeout."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if sock.poll(100):
                e = handle(sock.recv())
                kind = e.WhichOneof("body")
                if kind in kinds and getattr(e, kind).request_id == request_id:
                    return e
        return None

    request_id = 0
    for first in range(0, len(paths), a.chunk):
        sub = pb.Submit()
        for path in paths[first:first + a.chunk]:
            data = open(path, "rb").read()
            job_id = hashlib.sha256(("%s\0%s\0" % (a.tag, path)).encode() +
                                    hashlib.sha256(data).digest()).hexdigest()
            sub.jobs.add(id=job_id, tag=a.tag, name=path, data=data)
        request_id += 1
        sub.request_id = request_id
        msg = envelope(pb, submit=sub)
        while True:
            if time.monotonic() > deadline:
                print("gave up", file=sys.stderr)
                return 3
            sock.send(msg)
            e = wait_reply(request_id, ("submit_ack", "slow_down"), 10)
            if e is None:
                continue  # no answer (broker restarting?): send the same Submit again
            if e.WhichOneof("body") == "slow_down":
                time.sleep(e.slow_down.retry_after_ms / 1000.0)
                continue
            for ack in e.submit_ack.jobs:
                if ack.state in (pb.JobAck.ACCEPTED, pb.JobAck.DUPLICATE):
                    pending.add(ack.job_id)
                elif ack.state == pb.JobAck.COMMITTED:
                    committed += 1
                else:
                    failed += 1
                    print("rejected %s: %s" % (ack.job_id, ack.reason), file=sys.stderr)
            break
        print("submitted %d/%d, committed %d" % (min(first + a.chunk, len(paths)),
                                                len(paths), committed), flush=True)

    # Wait for the commits; ask for the tag's counts now and then in case notices
    # were lost.
    status_id = 1000000
    while pending and time.monotonic() < deadline:
        status_id += 1
        sock.send(envelope(pb, status_request=pb.StatusRequest(tag=a.tag,
                                                               request_id=status_id)))
        e = wait_reply(status_id, ("status_reply",), 1.0)
        if e is not None and pending:
            s = e.status_reply
            if s.tag_total and s.tag_committed >= s.tag_total:
                committed += len(pending)
                failed = max(failed, s.tag_failed)
                pending.clear()
    if pending:
        print("gave up with %d jobs not committed" % len(pending), file=sys.stderr)
        return 3
    print("%d images: %d committed, %d failed" % (len(paths), committed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
