#!/usr/bin/python3
"""test_metrics.py - the broker's state in the Prometheus text format: `facemill
status --format prometheus`, and the metrics.file of facemill-broker and
facemill-sink, against `facemill status` and the results database.

    test_metrics.py --bin BUILD/bin --src SRC

A real broker, sink and worker (two pipeline processes, --decode-only) on ipc://
label 300 generated images and four bad files under one tag, with metrics.file set
to DIR/fm-%n.prom every 200 ms. Then, with the broker idle:
  - every exposition (the status output, both files) passes a strict parser of the
    text format: HELP and TYPE once per family and before its samples, a family's
    samples together, valid names, label escapes and numbers, no sample twice,
    counters named *_total and not negative, every name facemill_-prefixed; and
    `promtool check metrics` where promtool is installed;
  - the status metrics equal what `facemill status` prints: queued, at workers,
    awaiting commit, committed, quarantined, workers, credit (total and free), each
    worker's credit and jobs, the tag's jobs, committed and failed; each worker's
    last-heard age is there;
  - the broker's file reaches the same committed count and has the journal's size and
    free space; the sink's file counts the stored results (the database's rows) and
    its transactions, with nothing pending; once the programs stopped, no temporary
    file is left beside them.
Every wait is bounded and waits for a state. Exit 0 pass, 1 fail.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import test_service as svc  # noqa: E402
from fm_testlib import Checks  # noqa: E402

check = Checks("test_metrics")
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*$")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


class ExpositionError(Exception):
    pass


def parse_value(s):
    if s in ("NaN", "+Inf", "-Inf", "Inf"):
        return float(s.replace("Inf", "inf").replace("NaN", "nan"))
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", s):
        raise ExpositionError("bad number %r" % s)
    return float(s)


def parse_labels(s):
    """'{a="x",b="y\\"z"}' -> (('a', 'x'), ('b', 'y"z')); strict about escapes."""
    out, i = [], 1
    while i < len(s) - 1:
        m = re.match(r"([^=]+)=\"", s[i:])
        if not m or not LABEL.match(m.group(1)):
            raise ExpositionError("bad label name in %r" % s)
        i += m.end()
        val = []
        while True:
            if i >= len(s):
                raise ExpositionError("unterminated label value in %r" % s)
            c = s[i]
            if c == "\\":
                e = s[i + 1:i + 2]
                if e not in ("\\", '"', "n"):
                    raise ExpositionError("bad escape \\%s in %r" % (e, s))
                val.append({"n": "\n"}.get(e, e))
                i += 2
            elif c == '"':
                i += 1
                break
            elif c == "\n":
                raise ExpositionError("line break in a label value")
            else:
                val.append(c)
                i += 1
        out.append((m.group(1), "".join(val)))
        if s[i] == ",":
            i += 1
        elif s[i] != "}":
            raise ExpositionError("expected , or } in %r" % s)
    if not s.endswith("}"):
        raise ExpositionError("labels not closed: %r" % s)
    names = [k for k, _ in out]
    if len(set(names)) != len(names):
        raise ExpositionError("a label twice in %r" % s)
    return tuple(out)


def parse(text):
    """Strict parse of the text format; returns {(name, labels): value} and
    {name: type}. Raises ExpositionError."""
    if not text.endswith("\n"):
        raise ExpositionError("does not end with a line break")
    samples, types, helps, done = {}, {}, set(), set()
    current = [None]

    def family(name, n):
        """A line of family name: the families must not interleave."""
        if name != current[0]:
            if name in done:
                raise ExpositionError("line %d: family %s seen before" % (n, name))
            if current[0]:
                done.add(current[0])
            current[0] = name

    for n, line in enumerate(text[:-1].split("\n"), 1):
        if not line:
            raise ExpositionError("line %d empty" % n)
        if line.startswith("#"):
            m = re.match(r"# (HELP|TYPE) (\S+) ?(.*)$", line)
            if not m:
                continue  # a plain comment
            kind, name, rest = m.groups()
            if not NAME.match(name):
                raise ExpositionError("line %d: bad name %r" % (n, name))
            family(name, n)
            if kind == "TYPE":
                if name in types or rest not in TYPES:
                    raise ExpositionError("line %d: TYPE again or unknown %r" % (n, rest))
                if any(k[0] == name for k in samples):
                    raise ExpositionError("line %d: TYPE after samples" % n)
                types[name] = rest
            else:
                if name in helps:
                    raise ExpositionError("line %d: HELP twice" % n)
                if re.search(r"\\[^\\n]", rest.replace("\\\\", "")):
                    raise ExpositionError("line %d: bad escape in HELP" % n)
                helps.add(name)
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)( -?\d+)?$", line)
        if not m:
            raise ExpositionError("line %d: not a sample: %r" % (n, line))
        name, labels, value = m.group(1), m.group(2), m.group(3)
        family(name, n)
        key = (name, parse_labels(labels) if labels else ())
        if key in samples:
            raise ExpositionError("line %d: sample twice: %s" % (n, key))
        samples[key] = parse_value(value)
    for (name, _), v in samples.items():
        if not name.startswith("facemill_"):
            raise ExpositionError("%s: not facemill_-prefixed" % name)
        if types.get(name) == "counter" and (not name.endswith("_total") or v < 0):
            raise ExpositionError("counter %s: name or value (%g)" % (name, v))
    return samples, types


def strict(text, what):
    try:
        s, t = parse(text)
    except ExpositionError as e:
        check(False, "%s parses strictly: %s" % (what, e))
        return {}, {}
    check(s, "%s parses strictly (%d samples)" % (what, len(s)))
    return s, t


def promtool(text, what):
    tool = shutil.which("promtool")
    if not tool:
        print("promtool not installed: %s checked by the parser here only" % what)
        return
    p = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    check(p.returncode == 0, "promtool check metrics %s: %s" % (what,
                                                               (p.stdout + p.stderr).strip()))


def status_text(c, tag):
    r = subprocess.run([os.path.join(c.bin, "facemill"), "status", "--tag", tag] + c.args(),
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 0, "facemill status exits 0")
    return r.stdout


def text_numbers(t):
    """The numbers `facemill status` prints, by metric name."""
    out = {}
    m = re.search(r"queue: +(\d+) waiting \(bound (\d+)\), (\d+) at workers, (\d+) awaiting", t)
    if m:
        out.update({"facemill_jobs_queued": m[1], "facemill_queue_max_jobs": m[2],
                    "facemill_jobs_in_flight": m[3], "facemill_jobs_awaiting_commit": m[4]})
    m = re.search(r"committed: +(\d+) \((\d+) quarantined", t)
    if m:
        out.update({"facemill_jobs_committed_total": m[1],
                    "facemill_jobs_quarantined_total": m[2]})
    m = re.search(r"workers: +(\d+), credit (\d+) \((\d+) free\)", t)
    if m:
        out.update({"facemill_workers": m[1], "facemill_workers_credit": m[2],
                    "facemill_workers_credit_free": m[3]})
    m = re.search(r"tag (\S+):  (\d+) jobs, (\d+) committed, (\d+) failed", t)
    if m:
        out.update({"tag": m[1], "facemill_tag_jobs": m[2], "facemill_tag_jobs_committed": m[3],
                    "facemill_tag_jobs_failed": m[4]})
    workers = {}
    for w in re.finditer(r"^  (\S+) +credit (\d+) busy (\d+), heard (\d+) ms ago", t, re.M):
        workers[w[1]] = (int(w[2]), int(w[3]))
    return {k: (v if k == "tag" else int(v)) for k, v in out.items()}, workers


def plain(s, name):
    return s.get((name, ()))


def read_file(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--src", required=True)
    a = ap.parse_args()
    a.bin, a.src = os.path.abspath(a.bin), os.path.abspath(a.src)
    tmp = tempfile.mkdtemp(prefix="fmmet.", dir="/tmp")
    mdir = os.path.join(tmp, "textfile")
    os.mkdir(mdir)
    c = svc.Cluster(a.bin, a.src, tmp, ["metrics.file=%s/fm-%%n.prom" % mdir,
                                        "metrics.interval_ms=200"])
    try:
        svc.make_images(a.bin, os.path.join(tmp, "in"), 300, bad=True)
        n = len(os.listdir(os.path.join(tmp, "in")))
        c.sink()
        c.broker()
        c.worker("worker-a", processes=2)
        p = c.submit([os.path.join(tmp, "in")], "metrics")
        code = svc.finish_submit(c, p, 300)
        check(code == 1, "submit exits 1 (the bad files failed): %d" % code)
        svc.settle(c)
        text = status_text(c, "metrics")
        want, workers = text_numbers(text)
        r = subprocess.run([os.path.join(a.bin, "facemill"), "status", "--tag", "metrics",
                            "--format", "prometheus"] + c.args(),
                           capture_output=True, text=True, timeout=30)
        check(r.returncode == 0, "status --format prometheus exits 0")
        prom = r.stdout
        s, types = strict(prom, "status --format prometheus")
        promtool(prom, "(status)")
        check(len(want) == 13 and len(workers) == 2,
              "facemill status printed its numbers: %s, %s" % (want, workers))
        for k, v in want.items():
            if k == "tag":
                continue
            got = plain(s, k) if not k.startswith("facemill_tag_") else \
                s.get((k, (("tag", want["tag"]),)))
            check(got == v, "%s: %s (facemill status: %s)" % (k, got, v))
        check(want.get("facemill_jobs_committed_total", 0) >= n and
              want.get("facemill_tag_jobs") == n and want.get("facemill_tag_jobs_failed") == 4,
              "the run: %d jobs, 4 failed (%s)" % (n, want))
        for name, (credit, busy) in workers.items():
            lab = (("worker", name),)
            check(s.get(("facemill_worker_credit", lab)) == credit and
                  s.get(("facemill_worker_jobs", lab)) == busy,
                  "worker %s: credit %s, jobs %s" % (name, credit, busy))
            heard = s.get(("facemill_worker_last_heard_seconds", lab))
            check(heard is not None and 0 <= heard < 60, "worker %s heard %s s ago" %
                  (name, heard))
        check(types.get("facemill_jobs_committed_total") == "counter" and
              types.get("facemill_jobs_queued") == "gauge", "types: counters and gauges")
        # the files: the broker's reaches the same committed count, the sink's the rows
        committed = want.get("facemill_jobs_committed_total")
        bfile, sfile = os.path.join(mdir, "fm-broker.prom"), os.path.join(mdir, "fm-sink.prom")
        rows = c.rows()[0]
        svc.wait_until(lambda: plain(parse_quiet(read_file(bfile)),
                                     "facemill_jobs_committed_total") == committed,
                       30, "the broker's metrics file to count %s commits" % committed)
        svc.wait_until(lambda: plain(parse_quiet(read_file(sfile)),
                                     "facemill_sink_results_stored_total") == rows and
                       plain(parse_quiet(read_file(sfile)),
                             "facemill_sink_results_pending") == 0,
                       30, "the sink's metrics file to count %d stored results" % rows)
        btext, stext = read_file(bfile), read_file(sfile)
        b, _ = strict(btext, "the broker's metrics file")
        sk, _ = strict(stext, "the sink's metrics file")
        promtool(btext, "(broker file)")
        promtool(stext, "(sink file)")
        for k in ("facemill_jobs_queued", "facemill_jobs_in_flight",
                  "facemill_jobs_awaiting_commit", "facemill_workers",
                  "facemill_workers_credit"):
            check(plain(b, k) == want.get(k), "broker file %s: %s (status: %s)" %
                  (k, plain(b, k), want.get(k)))
        check(all(plain(b, k) is not None and plain(b, k) > 0 for k in
                  ("facemill_broker_journal_bytes",
                   "facemill_broker_journal_filesystem_avail_bytes",
                   "facemill_broker_journal_filesystem_size_bytes")),
              "broker file: the journal's size and its filesystem's free space")
        check(plain(sk, "facemill_sink_results_received_total") >= rows and
              plain(sk, "facemill_sink_transactions_total") >= 1 and
              plain(sk, "facemill_sink_transactions_failed_total") == 0 and
              plain(sk, "facemill_sink_database_bytes") > 0 and
              plain(sk, "facemill_sink_database_filesystem_avail_bytes") > 0,
              "sink file: received, transactions, none failed, database and free bytes")
        check(oct(os.stat(bfile).st_mode & 0o777) == "0o644", "the files are readable by all")
        # Once the programs stopped, nothing but the two files: every temporary file
        # was renamed into place (while they run, one may exist for a moment).
        c.stop_all()
        check(sorted(os.listdir(mdir)) == ["fm-broker.prom", "fm-sink.prom"],
              "only the two .prom files in the directory after a stop (%s)" %
              sorted(os.listdir(mdir)))
    except svc.Failure as e:
        check(False, str(e))
        c.dump_logs()
    finally:
        c.stop_all()
        check.done_with(tmp)
    return check.summary()


def parse_quiet(text):
    try:
        return parse(text)[0] if text else {}
    except ExpositionError:
        return {}


if __name__ == "__main__":
    sys.exit(main())
