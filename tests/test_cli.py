#!/usr/bin/python3
"""test_cli.py - every `facemill` command parses its options one way and exits the
same way: 0 success, 1 failure, 2 usage error.

    test_cli.py --bin BIN_DIR

For every command `facemill --help` lists, and every sub-command its help names
(`facemill model info`, `facemill models fetch`, `facemill train --freeze`):
  - --help and -h exit 0 with the usage line on stdout, list the options every
    command takes, and every option the help lists is accepted by the parser (run
    with a valid value and a bad --set, it fails on the --set, not on the option);
  - an unknown option exits 2 with one line naming it, and nothing on stdout;
  - every option with a range in its help refuses values that are not entirely a
    number in that range (abc, 5x, nan, inf, an empty string, 1e999, one beyond
    each bound; 2.5 for integers) with exit 2 and a line naming the option and
    what it accepts;
  - a --set of an unknown key, without '=', or of a value of the wrong type exits 2
    with a line naming it;
and the options the commands took before their parser was shared still exist; a
configuration that is a FIFO or a directory refused at once, /dev/stdin, <(...)
and /dev/null read;
`facemill --version` and `facemill help COMMAND`; the daemons' --version; the bad
arguments of the daemons and of facemill-bench-detect (unknown options, stray
operands, missing or bad values, options that exclude each other), each named in one
line before any usage text.
Nothing runs for real: every command line here fails before a command starts its
work (or prints its help). Exit status: 0 pass, 1 fail.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

TIMEOUT = 60
# A command's own options and the common ones, as the help prints them:
# "  -j, --workers N   text [0..4096]" (the text may wrap onto further lines).
OPT_LINE = re.compile(r"^  (?:-(\w), )?(--[\w-]+)(?: (\S+))?(?:\s|$)")
RANGE = re.compile(r"\[(-?[\d.e+-]+)\.\.(-?[\d.e+-]+)\]")
SEE_HELP = re.compile(r"`facemill ((?:[\w-]+ )+)--help`")
BAD_SET = "--set=no.such_key=1"

# Options that existed before the commands shared one parser: they must keep working.
KNOWN = {
    "label": ["-o", "--output", "-j", "--workers", "--by-path", "--all", "--progress",
              "--worker-arg"],
    "submit": ["--tag", "--by-path", "--all", "--progress"],
    "status": ["--tag", "--timeout"],
    "export": ["--format", "--times", "-o", "--output"],
    "detect": ["--draw", "--draw-dir", "--ppm-dir"],
    "eval": ["--data", "--json"],
    "config": ["--describe"],
    "models fetch": ["--dir", "--offline", "--force", "-q"],
    "model compact": ["--force"],
    "train --freeze": ["--freeze", "--train", "--val", "--holdout", "-o", "--output",
                       "--cache", "--jobs", "--extract-only", "--feature", "--flip",
                       "--hidden", "--dropout", "--lr", "--wd", "--age-sigma",
                       "--age-weight", "--batch", "--epochs", "--patience", "--seed"],
    "train": ["--train", "--val", "--holdout", "-o", "--output", "--heads", "--checkpoint",
              "--checkpoint-steps", "--landmarks", "--jobs", "--threads", "--from",
              "--epochs", "--patience", "--batch", "--optimizer", "--momentum", "--lr",
              "--lr-mode", "--lr-heads", "--wd", "--schedule", "--step-epochs",
              "--step-gamma", "--warmup", "--hidden", "--dropout", "--age-sigma",
              "--age-weight", "--gender-weight", "--ethnicity-weight",
              "--label-smoothing", "--drop-hardest", "--drop-below",
              "--align-zoom", "--flip", "--shift", "--scale",
              "--rotate", "--brightness", "--contrast", "--seed", "--limit"],
}
COMMON = ["-h", "--help", "--config", "--set", "-q", "--quiet", "-v", "--verbose",
          "--log-level"]
# Integer options (a fraction is refused); the others with a range take decimals.
INTEGERS = {"-j", "--workers", "--timeout", "--jobs", "--threads", "--epochs", "--patience",
            "--batch", "--seed", "--limit", "--checkpoint-steps", "--count"}
# Valid values of options whose value is a name the help does not spell out.
VALUES = {"--hidden": "0", "--from": "heads", "--log-level": "info", "--config": "empty.yaml",
          "--case": "photos", "--compare-set": "heads.model=x", "--degrade-kinds": "gray"}

failures = []
passed = 0


def check(cond, msg):
    global passed
    if cond:
        passed += 1
    else:
        failures.append(msg)
        print("FAIL " + msg, flush=True)


class Runner:
    def __init__(self, prog, cwd):
        self.prog, self.cwd = prog, cwd
        self.env = dict(os.environ)
        self.env.pop("FACEMILL_CONFIG", None)

    def run(self, args, timeout=TIMEOUT, env=None):
        try:
            p = subprocess.run([self.prog] + args, cwd=self.cwd, env=env or self.env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=timeout,
                               universal_newlines=True)
        except subprocess.TimeoutExpired:
            return -1, "", "timed out"
        return p.returncode, p.stdout, p.stderr


def show(args):
    return "facemill " + " ".join(a if a else "''" for a in args)


def parse_help(text):
    """{option: (short or None, long, value name or None, (lo, hi) or None)}, by the
    spelling each way of writing it."""
    opts = {}
    lines = text.split("\n")
    for i, line in enumerate(lines):
        m = OPT_LINE.match(line)
        if not m:
            continue
        short, long_, value = m.group(1), m.group(2), m.group(3)
        # the help text of this option: this line and its continuation lines
        block = line
        for nxt in lines[i + 1:]:
            if not nxt.startswith(" " * 10):
                break
            block += " " + nxt.strip()
        r = RANGE.search(block)
        rng = (float(r.group(1)), float(r.group(2))) if r else None
        o = (("-" + short) if short else None, long_, value, rng)
        opts[long_] = o
        if short:
            opts["-" + short] = o
    return opts


def valid_value(o):
    short, long_, value, rng = o
    if value is None:
        return None
    if rng:
        return ("%d" if long_ in INTEGERS else "%g") % rng[0]
    if long_ in VALUES:
        return VALUES[long_]
    if "|" in value:
        return value.split("|")[0]
    return "x"


def operands_needed(r, cmd):
    """How many placeholder arguments get cmd past its argument count to the
    configuration (a bad --set then reports the key), or None."""
    for n in range(4):
        code, _, err = r.run(cmd + [BAD_SET] + ["arg%d" % k for k in range(n)])
        if code == 2 and "no.such_key" in err:
            return n
    return None


def commands(r):
    code, out, _ = r.run(["--help"])
    check(code == 0 and "commands:" in out, "facemill --help exits 0 and lists commands")
    top = []
    in_list = False
    for line in out.split("\n"):
        if line.strip() == "commands:":
            in_list = True
            continue
        m = re.match(r"^  ([a-z][\w-]*)\s", line)
        if in_list and m:
            top.append(m.group(1))
        elif in_list and not line.strip() and top:
            in_list = False
    for c in COMMON:
        check(re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(c), out) is not None,
              "facemill --help lists the common option %s" % c)
    cmds = []
    for name in top:
        queue = [[name]]
        while queue:
            cmd = queue.pop(0)
            if cmd in cmds:
                continue
            cmds.append(cmd)
            code, out, _ = r.run(cmd + ["--help"])
            if code != 0:
                continue
            subs = set(re.findall(r"\bfacemill %s ([a-z][\w-]*)\b" % re.escape(name), out))
            for m in SEE_HELP.finditer(out):
                words = m.group(1).split()
                if words[0] == name and len(words) > 1:
                    queue.append(words)
            for s in sorted(subs):
                if s != "--help":
                    queue.append([name, s])
    return cmds


def check_help(r, cmd, name):
    for h in ("--help", "-h"):
        code, out, err = r.run(cmd + [h])
        check(code == 0 and out.startswith("usage: facemill %s" % cmd[0]) and not err,
              "%s exits 0 with the usage on stdout (exit %d, stderr %r)"
              % (show(cmd + [h]), code, err[:200]))
    code, out, _ = r.run(cmd + ["--help"])
    opts = parse_help(out)
    for c in COMMON:
        check(c in opts, "%s lists the common option %s" % (show(cmd + ["--help"]), c))
    for k in KNOWN.get(name, []):
        check(k in opts, "%s lists %s" % (show(cmd + ["--help"]), k))
    check("exit status:" in out, "%s states its exit status" % show(cmd + ["--help"]))
    return opts


def check_accepted(r, cmd, opts, n):
    """Every option the help lists parses with a valid value."""
    for spelled, o in sorted(opts.items()):
        if o[1] == "--help":
            continue
        v = valid_value(o)
        args = cmd + [spelled] + ([v] if v is not None else []) + [BAD_SET] + \
            ["arg%d" % k for k in range(n)]
        if o[1] == "--set":
            args = cmd + ["--set", "no.such_key=1"] + ["arg%d" % k for k in range(n)]
        code, out, err = r.run(args)
        check(code == 2 and "no.such_key" in err and "unknown option" not in err,
              "%s: the option is accepted (exit %d: %s)" % (show(args), code, err.strip()[:300]))


def check_unknown(r, cmd, n):
    for bad in ("--no-such-option", "-Z", "--no-such-option=1"):
        args = cmd + [bad] + ["arg%d" % k for k in range(n)]
        code, out, err = r.run(args)
        lines = err.strip().split("\n")
        check(code == 2 and not out and len(lines) == 1 and "unknown option" in err and
              bad.split("=")[0] in err,
              "%s: exit 2 and one line naming it (exit %d: %s)" % (show(args), code, err.strip()[:300]))


def check_numbers(r, cmd, opts, n):
    seen = set()
    for spelled, o in sorted(opts.items()):
        short, long_, value, rng = o
        if not rng or (long_, spelled) in seen:
            continue
        seen.add((long_, spelled))
        lo, hi = rng
        is_int = long_ in INTEGERS
        bad = ["abc", "5x", "nan", "inf", "", "1e999", " 1", "0x10",
               ("%d" if is_int else "%g") % (hi * 2 + 1 if hi > 0 else hi + 1)]
        if lo > 0:
            bad.append("%g" % (lo / 2 if not is_int else lo - 1))
        elif lo == 0:
            bad.append("-1")
        if is_int:
            bad.append("%g" % (lo + 0.5))
        for v in bad:
            for form in ([spelled, v], ["%s=%s" % (long_, v)]):
                args = cmd + form + ["arg%d" % k for k in range(n)]
                code, out, err = r.run(args)
                lines = err.strip().split("\n")
                check(code == 2 and len(lines) == 1 and "expected" in err and
                      (spelled in err or long_ in err),
                      "%s: exit 2 naming the option and what it takes (exit %d: %s)"
                      % (show(args), code, err.strip()[:300]))


def check_sets(r, cmd, n):
    extra = ["arg%d" % k for k in range(n)]
    for s, needle in (("--set=no.such_key=1", "no.such_key"), ("--set=novalue", "novalue"),
                      ("--set=detect.min_face=abc", "detect.min_face"),
                      ("--set=detect.min_face=1", "detect.min_face")):
        args = cmd + [s] + extra
        code, out, err = r.run(args)
        check(code == 2 and needle in err and len(err.strip().split("\n")) == 1,
              "%s: exit 2 naming the setting (exit %d: %s)" % (show(args), code, err.strip()[:300]))
    args = cmd + ["--config", "/nonexistent/facemill.yaml"] + extra
    code, out, err = r.run(args)
    check(code == 2 and "/nonexistent/facemill.yaml" in err,
          "%s: exit 2 naming the file (exit %d: %s)" % (show(args), code, err.strip()[:300]))


def check_examples(r):
    """The cases that once went wrong, and the codes of usage errors found after
    parsing; a usage error comes out alone, in one line (nothing is started before
    it: no INFO line of the OpenBLAS kernels of the commands that compute), and
    creates nothing (no directory of --draw-dir, --ppm-dir or --chips-dir)."""
    cases = [
        (["label", "-j", "abc", "in", "-o", "out.db"], 2, "-j 'abc': expected an integer"),
        (["label", "in"], 2, "-o RESULTS.db is required"),
        (["status", "--timeout", "5x"], 2, "--timeout '5x'"),
        (["status", "--timeout", "0"], 2, "--timeout '0'"),
        (["train", "--freeze", "--jobs", "0", "--train", "d", "-o", "o.fmm"], 2, "--jobs '0'"),
        (["train", "--freeze", "--train", "d"], 2, "-o OUT.fmm is required"),
        (["train", "--train", "d", "-o", "o.fmm"], 2, "--heads HEADS.fmm is required"),
        (["train", "--train", "d", "-o", "o.fmm", "--heads", "h.fmm", "--teacher-weight",
          "0.5"], 2, "--teacher-weight needs --teacher"),
        (["train", "--train", "d", "-o", "o.fmm", "--heads", "h.fmm", "--degrade-kinds",
          "gray,nope"], 2, "--degrade-kinds 'gray,nope'"),
        (["train", "--train", "d", "-o", "o.fmm", "--heads", "h.fmm", "--degrade-kinds",
          "gray"], 2, "--degrade-kinds needs --degrade P above 0"),
        (["train", "--train", "d", "-o", "o.fmm", "--heads", "h.fmm", "--degrade", "0",
          "--degrade-kinds", "gray,rot"], 2, "--degrade-kinds needs --degrade P above 0"),
        (["detect", "--min-face", "x", "a.jpg"], 2, "unknown option '--min-face'"),
        (["detect", "--draw", "a.jpg", "--draw-dir", "d", "a.jpg"], 2, "exclude each other"),
        (["eval"], 2, "--data DIR is required"),
        (["eval", "--data", "d", "--compare", "c.jsonl", "--compare-set", "heads.model=x"],
         2, "--compare and --compare-set exclude each other"),
        (["eval", "--data", "d", "--degrade", "nope"], 2,
         "--degrade: unknown damage 'nope'"),
        (["eval", "--data", "d", "--compare-set", "no.such_key=1"], 2,
         "--compare-set: unknown key 'no.such_key'"),
        (["train", "--freeze", "-o", "o.fmm"], 2, "--train DIR is required"),
        (["train", "--freeze", "--train", "d", "--extract-only"], 2,
         "--extract-only needs --cache"),
        (["train", "-o", "o.fmm"], 2, "--train DIR is required"),
        (["predict", "--draw", "a.jpg", "a.jpg", "b.jpg"], 2,
         "--draw takes exactly one image"),
        (["predict", "--draw", "a.jpg", "--draw-dir", "d", "a.jpg"], 2,
         "exclude each other"),
        (["detect", "--draw", "a.jpg", "a.jpg", "b.jpg"], 2,
         "--draw takes exactly one image"),
        (["detect", "--ppm-dir", "ppm", "--draw", "a.jpg", "--draw-dir", "drawn", "a.jpg"],
         2, "--draw and --draw-dir exclude each other"),
        (["detect", "--ppm-dir", "ppm", "--draw", "a.jpg", "a.jpg", "b.jpg"], 2,
         "--draw takes exactly one image"),
        (["predict", "--chips-dir", "chips", "--set", "heads.model=", "a.jpg"], 2,
         "--chips-dir aligns faces for the backbone: heads.model must not be empty"),
        (["predict", "--draw-dir", "drawn", "--chips-dir", "chips", "--set", "heads.model=",
          "a.jpg"], 2, "heads.model must not be empty"),
        (["predict", "--chips-dir", "chips", "--draw", "a.jpg", "--draw-dir", "drawn",
          "a.jpg"], 2, "--draw and --draw-dir exclude each other"),
        (["predict", "--chips-dir", "chips", "--draw", "a.jpg", "a.jpg", "b.jpg"], 2,
         "--draw takes exactly one image"),
        # facemill(1): [--seconds S | --count N]; checked before anything is measured
        # (one image of one case, on one process, were it measured)
        (["bench", "--seconds", "1", "--count", "1", "--case", "photos", "-j", "1"], 2,
         "--seconds and --count exclude each other"),
        (["bench", "--count", "1", "--seconds", "1", "--case", "photos", "-j", "1"], 2,
         "--seconds and --count exclude each other"),
        (["export"], 2, "expected at least 1 argument"),
        (["export", "a.db", "b.db"], 2, "unexpected argument 'b.db'"),
        (["model"], 2, "expected at least 1 argument"),
        (["model", "nosuch"], 2, "unknown sub-command 'nosuch'"),
        (["models", "nosuch"], 2, "unknown subcommand 'nosuch'"),
        (["nosuch"], 2, "unknown command 'nosuch'"),
        (["export", "/nonexistent/results.db"], 1, "/nonexistent/results.db"),
        (["model", "info", "/nonexistent/m.fmm"], 1, "/nonexistent/m.fmm"),
    ]
    for args, want, needle in cases:
        before = set(os.listdir(r.cwd))
        code, out, err = r.run(args)
        made = sorted(set(os.listdir(r.cwd)) - before)
        for name in made:
            path = os.path.join(r.cwd, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        check(code == want and needle in err,
              "%s: exit %d with '%s' (exit %d: %s)" % (show(args), want, needle, code,
                                                       err.strip()[:300]))
        lines = err.strip().split("\n")
        check(want != 2 or (len(lines) == 1 and "INFO" not in err and not out),
              "%s: the usage error alone, in one line: %s"
              % (show(args), err.strip()[:300]))
        check(want != 2 or not made,
              "%s: a usage error creates nothing, made %s" % (show(args), made))
    code, out, err = r.run(["--version"])
    check(code == 0 and re.fullmatch(r"facemill \d+\.\d+\.\d+\n", out),
          "facemill --version prints the version (%d: %r)" % (code, out))
    code, out, err = r.run(["help", "keygen"])
    code2, out2, _ = r.run(["keygen", "--help"])
    check(code == 0 and out == out2 and out.startswith("usage: facemill keygen"),
          "facemill help keygen prints keygen's help (%d)" % code)


def check_not_regular(r, bindir, cwd):
    """A configuration that is a named FIFO (whose open would wait for ever without a
    writer) or a directory is refused at once: exit 2 with a line naming it, from
    --config, $FACEMILL_CONFIG and the daemons' --config; /dev/stdin reads standard
    input, a shell's <(...) its pipe, /dev/null nothing."""
    fifo = os.path.join(cwd, "fifo.yaml")
    os.mkfifo(fifo)
    for args, env in ((["config", "--config", fifo], None),
                      (["detect", "--config", fifo, "a.jpg"], None),
                      (["config", "--config", cwd], None),
                      (["config"], dict(r.env, FACEMILL_CONFIG=fifo))):
        code, out, err = r.run(args, timeout=10, env=env)
        path = args[2] if len(args) > 2 else fifo
        why = "a directory" if path == cwd else "a named FIFO, whose open would wait"
        check(code == 2 and (path + ": " + why) in err and
              len(err.strip().split("\n")) == 1,
              "%s%s: exit 2 at once, naming the file (exit %d: %s)"
              % ("FACEMILL_CONFIG=fifo " if env else "", show(args), code,
                 err.strip()[:300]))
    for prog in ("facemill-broker", "facemill-sink", "facemill-worker"):
        try:
            p = subprocess.run([os.path.join(bindir, prog), "--config", fifo], cwd=cwd,
                               stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=10)
            code, err = p.returncode, p.stderr
        except subprocess.TimeoutExpired:
            code, err = -1, "timed out"
        check(code == 2 and fifo + ": a named FIFO" in err,
              "%s --config FIFO: exit 2 at once, naming it (exit %d: %s)"
              % (prog, code, err.strip()[:300]))
    p = subprocess.run([r.prog, "config", "--config", "/dev/stdin"], cwd=cwd, env=r.env,
                       input="detect:\n  min_face: 33\n", capture_output=True, text=True,
                       timeout=TIMEOUT)
    check(p.returncode == 0 and "\n  min_face: 33\n" in p.stdout,
          "facemill config --config /dev/stdin reads standard input (exit %d: %s)"
          % (p.returncode, p.stderr.strip()[:300]))
    p = subprocess.run(["bash", "-c", 'exec "$0" config --config <(printf "detect:\\n'
                        '  min_face: 34\\n")', r.prog], cwd=cwd, env=r.env,
                       capture_output=True, text=True, timeout=TIMEOUT)
    check(p.returncode == 0 and "\n  min_face: 34\n" in p.stdout,
          "facemill config --config <(...) reads the pipe (exit %d: %s)"
          % (p.returncode, p.stderr.strip()[:300]))
    code, out, err = r.run(["config", "--config", "/dev/null"], timeout=10)
    check(code == 0 and "\n  min_face: 20\n" in out,
          "facemill config --config /dev/null: the defaults (exit %d: %s)"
          % (code, err.strip()[:300]))
    os.unlink(fifo)


def check_daemons(bindir, cwd):
    """The daemons' own arguments: --version, and a bad argument named in one line
    before the usage, exit 2; the same for facemill-bench-detect, which measures
    nothing when --only and --no-speed are both given."""
    cases = [
        (["facemill-broker", "--bogus"], "facemill-broker: unknown argument '--bogus'"),
        (["facemill-worker", "--bogus"], "facemill-worker: unknown argument '--bogus'"),
        (["facemill-worker", "--processes", "abc"], "not 'abc'"),
        (["facemill-worker", "--processes"], "--processes needs a number"),
        (["facemill-sink", "--db", ""], "--db needs a database path, not an empty one"),
        (["facemill-sink", "--db"], "--db needs a database path"),
        (["facemill-bench-detect", "--repeat", "abc"], "--repeat needs a whole number"),
        (["facemill-bench-detect", "--pad", "2"], "--pad needs a number from 0 to 1"),
        (["facemill-bench-detect", "--bogus"],
         "facemill-bench-detect: unknown option '--bogus'"),
        (["facemill-bench-detect", "--repeat", "3", "-x"],
         "facemill-bench-detect: unknown option '-x'"),
        (["facemill-bench-detect", "--only", "nope"],
         "facemill-bench-detect: --only: 'nope' is not 640, 12mp-jpeg or 12mp"),
        (["facemill-bench-detect", "--only"], "facemill-bench-detect: --only needs "),
        (["facemill-bench-detect", "--repeat"],
         "facemill-bench-detect: --repeat needs a whole number"),
        (["facemill-bench-detect", "--models"], "facemill-bench-detect: --models needs "),
        (["facemill-bench-detect", "--repeat", "3", "photo.jpg"],
         "facemill-bench-detect: unexpected argument 'photo.jpg'"),
        (["facemill-bench-detect", "--only", "640", "--no-speed"],
         "facemill-bench-detect: --only and --no-speed exclude each other"),
        (["facemill-bench-detect", "--no-speed", "--only", "12mp"],
         "facemill-bench-detect: --only and --no-speed exclude each other"),
    ]
    for args, needle in cases:
        p = subprocess.run([os.path.join(bindir, args[0])] + args[1:], cwd=cwd,
                           capture_output=True, text=True, timeout=TIMEOUT)
        first = p.stderr.splitlines()[0] if p.stderr else ""
        check(p.returncode == 2 and needle in first and not p.stdout,
              "%s: exit 2, first line '%s' (exit %d: %s)" % (show(args), needle,
                                                              p.returncode, first))
        # the programs that print their usage on such an error print it after the line
        rest = p.stderr.splitlines()[1:]
        check(not rest or rest[0].startswith("usage: " + args[0]),
              "%s: the line naming what was wrong, then the usage or nothing: %s"
              % (show(args), p.stderr.strip()[:300]))
    for prog in ("facemill-broker", "facemill-sink", "facemill-worker"):
        p = subprocess.run([os.path.join(bindir, prog), "--version"], cwd=cwd,
                           capture_output=True, text=True, timeout=TIMEOUT)
        check(p.returncode == 0 and re.fullmatch(prog + r" \d+\.\d+\.\d+\n", p.stdout),
              "%s --version (%d: %r)" % (prog, p.returncode, p.stdout))
    # an endpoint that is no tcp:// or ipc:// is said so, not "reached from other
    # machines"
    p = subprocess.run([os.path.join(bindir, "facemill-broker"), "--set",
                        "broker.clients=garbage://x", "--set",
                        "broker.journal=" + os.path.join(cwd, "j.db")], cwd=cwd,
                       capture_output=True, text=True, timeout=TIMEOUT)
    check(p.returncode != 0 and "is not an endpoint facemill binds" in p.stderr,
          "a garbage endpoint is named as such (%d: %s)" % (p.returncode,
                                                            p.stderr.strip()[-200:]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    a = ap.parse_args()
    prog = os.path.join(os.path.abspath(a.bin), "facemill")
    with tempfile.TemporaryDirectory(prefix="test_cli.") as cwd:
        open(os.path.join(cwd, "empty.yaml"), "w").close()
        r = Runner(prog, cwd)
        cmds = commands(r)
        names = [" ".join(c) for c in cmds]
        for want in ("label", "submit", "status", "export", "detect", "predict", "eval",
                     "config", "model info", "model compact", "models fetch", "models list",
                     "train", "train --freeze"):
            check(want in names, "command %s found from facemill --help" % want)
        for cmd in cmds:
            name = " ".join(cmd)
            n = operands_needed(r, cmd)
            check(n is not None, "%s: a bad --set exits 2 naming the key" % show(cmd))
            if n is None:
                continue
            opts = check_help(r, cmd, name)
            check_accepted(r, cmd, opts, n)
            check_unknown(r, cmd, n)
            check_numbers(r, cmd, opts, n)
            check_sets(r, cmd, n)
        check_examples(r)
        check_not_regular(r, os.path.dirname(prog), cwd)
        check_daemons(os.path.dirname(prog), cwd)
    print("cli: %d passed, %d failed" % (passed, len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
