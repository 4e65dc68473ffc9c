#!/usr/bin/python3
"""test_manpages.py - the man pages render without warnings and cover every command,
option and configuration key the programs print.

    test_manpages.py BIN_DIR MAN_DIR

Checks, each counted once in the summary line:
  - every page renders with `groff -man -ww -z` with nothing on stderr, and, when
    mandoc is installed, `mandoc -T lint -W warning` reports nothing; its .TH names
    the page and its section, and it has the sections listed in PAGES;
  - `facemill --help` lists commands; each has a subsection (.SS "facemill NAME") in
    COMMANDS of facemill.1, and every option (--long, -x) and every sub-command
    (`facemill model info`) that `facemill NAME --help` prints appears in that
    subsection; a help text that points to another (`facemill train --freeze
    --help`) is read too; the options every command takes, which each help lists
    after a line "common options", appear in OPTIONS of facemill.1;
  - every option of `facemill-broker --help`, `facemill-sink --help` and
    `facemill-worker --help` appears in facemill-broker.8, facemill-sink.8 and
    facemill-worker.8, and every option of the three benchmark programs' --help in
    their pages (facemill-bench-detect.1, -embed.1, -ops.1); a program of these that
    reads --config FILE lists --config and --set in its --help and its page names
    FACEMILL_CONFIG;
  - every key `facemill config --describe` prints appears in facemill.yaml.5.

The roff source is reduced to plain text for these checks (escapes such as \\- and
\\fB removed, macro arguments joined as they render), so a page may format an option
any way it likes. Prints each missing item, then `manpages: N checks, M failed`.
Exit status: 0 when every check ran and passed, 1 otherwise, 2 on a usage error.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fm_testlib import Checks  # noqa: E402

# page -> (name in .TH, section, sections it must have)
PAGES = {
    "facemill.1": ("FACEMILL", "1", ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS",
                                     "CONFIGURATION", "MODEL SEARCH PATH", "ENVIRONMENT",
                                     "FILES", "EXIT STATUS", "EXAMPLES", "SEE ALSO"]),
    "facemill-broker.8": ("FACEMILL-BROKER", "8", ["NAME", "SYNOPSIS", "DESCRIPTION",
                                                    "OPTIONS", "SIGNALS", "SYSTEMD",
                                                    "FILES", "SEE ALSO"]),
    "facemill-sink.8": ("FACEMILL-SINK", "8", ["NAME", "SYNOPSIS", "DESCRIPTION",
                                                "OPTIONS", "SIGNALS", "SYSTEMD", "FILES",
                                                "SEE ALSO"]),
    "facemill-worker.8": ("FACEMILL-WORKER", "8", ["NAME", "SYNOPSIS", "DESCRIPTION",
                                                    "OPTIONS", "SIGNALS", "SYSTEMD",
                                                    "FILES", "SEE ALSO"]),
    "facemill.yaml.5": ("FACEMILL.YAML", "5", ["NAME", "SYNOPSIS", "DESCRIPTION", "KEYS",
                                               "FILES", "SEE ALSO"]),
}
for _b in ("detect", "embed", "ops"):
    PAGES["facemill-bench-%s.1" % _b] = ("FACEMILL-BENCH-" + _b.upper(), "1",
                                         ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS",
                                          "EXIT STATUS", "SEE ALSO"])
DAEMONS = ["facemill-broker", "facemill-sink", "facemill-worker"]
# the benchmark programs, each with its page in section 1
BENCHES = ["facemill-bench-detect", "facemill-bench-embed", "facemill-bench-ops"]
HELP_TIMEOUT = 30

# Options: "--long-name" or a single-letter "-x", not inside a word ("128-d",
# "non-JPEG") nor a path or endpoint; "-sink" (one dash, several letters) is prose.
OPTION_RE = re.compile(r"(?<![\w\-/.:])(--[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*|-[A-Za-z](?![\w-]))")
# A key line of `facemill config --describe`: "section.key (type, ...)".
KEY_RE = re.compile(r"^([a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+) \(")
# A help text pointing to another: `facemill train --freeze --help`.
SEE_HELP_RE = re.compile(r"`facemill ((?:[\w-]+ )+)--help`")
# Where a help text's list of the options every command takes starts.
COMMON_RE = re.compile(r"^common options\b", re.M)
ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}
SILENT = {"RS", "RE", "in", "sp", "ne", "ti", "ll", "ad", "na", "nh", "hy", "ft", "ps",
          "vs", "br", "fi", "nf", "EX", "EE", "PD", "TH", "ds", "nr", "so", "ig"}

check = Checks("manpages")


def unescape(text):
    """Plain text of roff text: escapes removed or replaced."""
    special = {"aq": "'", "dq": '"', "em": "--", "en": "-", "bu": "*", "ti": "~",
               "ha": "^", "rs": "\\", "lq": '"', "rq": '"', "oq": "'", "cq": "'",
               "hy": "-", "mi": "-", "pl": "+", "eq": "=", "ga": "`", "sl": "/",
               "ba": "|", "or": "|", "at": "@", "sh": "#", "Fo": "<<", "Fc": ">>"}
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\" or i + 1 == len(text):
            out.append(c)
            i += 1
            continue
        e = text[i + 1]
        i += 2
        if e == '"':  # comment to the end of the line
            break
        if e in "-":
            out.append("-")
        elif e == "e":
            out.append("\\")
        elif e in " ~0":
            out.append(" ")
        elif e in "&:%|^c)/,{}":
            pass
        elif e == "(":
            out.append(special.get(text[i:i + 2], ""))
            i += 2
        elif e == "[":
            j = text.find("]", i)
            j = len(text) if j < 0 else j
            out.append(special.get(text[i:j], ""))
            i = j + 1
        elif e in "fFs*nmgk":  # font, size, string, register: argument dropped
            if i < len(text) and text[i] == "(":
                i += 3
            elif i < len(text) and text[i] == "[":
                j = text.find("]", i)
                i = len(text) if j < 0 else j + 1
            elif e == "s" and i < len(text) and text[i] in "+-":
                i += 2
            else:
                i += 1
        else:
            out.append(e)
    return "".join(out)


def macro_args(rest):
    """The arguments of a macro line, as roff splits them (quotes, "" inside)."""
    args = []
    i = 0
    while i < len(rest):
        while i < len(rest) and rest[i] in " \t":
            i += 1
        if i >= len(rest):
            break
        if rest[i] == '"':
            i += 1
            buf = []
            while i < len(rest):
                if rest[i] == '"':
                    if i + 1 < len(rest) and rest[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                if rest[i] == "\\" and i + 1 < len(rest):
                    buf.append(rest[i:i + 2])
                    i += 2
                    continue
                buf.append(rest[i])
                i += 1
            args.append("".join(buf))
        else:
            j = i
            while j < len(rest) and rest[j] not in " \t":
                j += 2 if rest[j] == "\\" else 1
            args.append(rest[i:j])
            i = j
    return args


def roff_lines(source):
    """(kind, text) per source line: kind "SH"/"SS" for headings, "" for text."""
    for line in source.split("\n"):
        if re.match(r"^[.']\s*\\\"", line):
            continue
        m = re.match(r"^[.']\s*([A-Za-z][A-Za-z0-9]*)\s*(.*)$", line)
        if m:
            name, args = m.group(1), macro_args(m.group(2))
            if name in SILENT:
                continue
            joiner = "" if name in ALTERNATING else " "
            text = unescape(joiner.join(args))
            yield (name if name in ("SH", "SS") else "", text)
        elif line.strip() in (".", "'"):
            continue
        else:
            yield ("", unescape(line))


def norm(text):
    return re.sub(r"\s+", " ", text).strip()


def page_text(source):
    return norm(" ".join(t for _, t in roff_lines(source)))


def sections(source):
    """{SH title: text}, and {SS title: text} of each SH: {sh: {ss: text}}."""
    sh, ss = {}, {}
    cur_sh, cur_ss = None, None
    for kind, text in roff_lines(source):
        if kind == "SH":
            cur_sh, cur_ss = norm(text), None
            sh.setdefault(cur_sh, [])
            ss.setdefault(cur_sh, {})
        elif kind == "SS":
            cur_ss = norm(text)
            ss.setdefault(cur_sh, {}).setdefault(cur_ss, [])
            if cur_sh is not None:
                sh[cur_sh].append(text)
        elif cur_sh is not None:
            sh[cur_sh].append(text)
            if cur_ss is not None:
                ss[cur_sh][cur_ss].append(text)
    return ({k: norm(" ".join(v)) for k, v in sh.items()},
            {k: {s: norm(" ".join(t)) for s, t in v.items()} for k, v in ss.items()})


def has_token(text, token):
    """token appears in text as a whole word of the command line ("--lr" is not
    found in "--lr-heads", nor "-o" in "--output")."""
    pat = r"(?<![\w-])" + r"\s+".join(re.escape(w) for w in token.split()) + r"(?![\w-])"
    return re.search(pat, text) is not None


def run_help(argv, cwd):
    """stdout of a --help command, or None (reported) when it cannot run or fails."""
    what = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(argv))
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, cwd=cwd, timeout=HELP_TIMEOUT,
                           universal_newlines=True)
    except (OSError, subprocess.TimeoutExpired) as e:
        check(False, "`%s` did not run: %s" % (what, e))
        return None
    if not check(p.returncode == 0 and p.stdout.strip(),
                 "`%s` exited %d with %s on stdout (stderr: %s)"
                 % (what, p.returncode, "nothing" if not p.stdout.strip() else "text",
                    p.stderr.strip()[:300])):
        return None
    return p.stdout


def options_of(help_text):
    opts = []
    for m in OPTION_RE.finditer(help_text):
        o = m.group(1)
        if o not in opts:
            opts.append(o)
    return opts


def split_common(help_text):
    """(the command's own part, the part from "common options" on) of a help text."""
    m = COMMON_RE.search(help_text)
    if not m:
        return help_text, ""
    return help_text[:m.start()], help_text[m.start():]


def check_common(common, options_text, what):
    """Every option of the common part of a help text is in the OPTIONS section."""
    for opt in options_of(common):
        check(has_token(options_text, opt),
              "facemill.1 [OPTIONS]: option %s (from `%s`) missing" % (opt, what))


def lint(man_dir):
    groff = shutil.which("groff")
    mandoc = shutil.which("mandoc")
    if not groff:
        check(False, "groff not found (Debian package groff-base): the pages cannot be checked")
    if not mandoc:
        print("note: mandoc not installed; `mandoc -T lint` skipped", flush=True)
    for page, (title, section, required) in sorted(PAGES.items()):
        path = os.path.join(man_dir, page)
        if not check(os.path.isfile(path), "%s: missing" % path):
            continue
        if groff:
            p = subprocess.run([groff, "-man", "-ww", "-z", path], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True)
            check(p.returncode == 0 and not p.stderr.strip(),
                  "%s: groff -man -ww -z (exit %d):\n%s"
                  % (page, p.returncode, p.stderr.rstrip()))
        if mandoc:
            p = subprocess.run([mandoc, "-T", "lint", "-W", "warning", path],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True)
            out = (p.stdout + p.stderr).strip()
            check(p.returncode == 0 and not out,
                  "%s: mandoc -T lint -W warning (exit %d):\n%s" % (page, p.returncode, out))
        with open(path, encoding="utf-8") as f:
            source = f.read()
        th = re.search(r"^\.TH\s+(.*)$", source, re.M)
        th_args = [unescape(a) for a in macro_args(th.group(1))] if th else []
        check(th_args[:2] == [title, section], "%s: .TH should start with %s %s, it has %s"
              % (page, title, section, " ".join(th_args[:2]) or "nothing"))
        sh, _ = sections(source)
        for name in required:
            check(name in sh, "%s: no section %s" % (page, name))


def check_facemill(bin_dir, man_dir, cwd):
    prog = os.path.join(bin_dir, "facemill")
    path = os.path.join(man_dir, "facemill.1")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        source = f.read()
    sh, ss = sections(source)
    options_text = sh.get("OPTIONS", "")
    # subsections of COMMANDS by command name ("facemill model" -> "model")
    commands_ss = {}
    for title, text in ss.get("COMMANDS", {}).items():
        words = title.split()
        if words and words[0] == "facemill":
            words = words[1:]
        if words:
            commands_ss[words[0]] = text
    whole = page_text(source)
    top = run_help([prog, "--help"], cwd)
    if top is None:
        return
    commands = []
    in_list = False
    for line in top.split("\n"):
        if re.match(r"^\s*commands:\s*$", line):
            in_list = True
            continue
        if in_list:
            m = re.match(r"^\s+([a-z][a-z0-9-]*)\s", line)
            if m:
                commands.append(m.group(1))
            elif not line.strip():
                if commands:
                    in_list = False
    if not check(commands, "`facemill --help` lists no commands (expected a 'commands:' list)"):
        return
    top, top_common = split_common(top)
    check_common(top_common, options_text, "facemill --help")
    for opt in options_of(top):
        check(has_token(whole, opt), "facemill.1: option %s of `facemill --help` missing" % opt)
    for cmd in commands:
        text = commands_ss.get(cmd)
        if not check(text is not None,
                     "facemill.1: no subsection .SS \"facemill %s\" in COMMANDS" % cmd):
            text = ""
        helps = [([prog, cmd, "--help"], "facemill %s --help" % cmd)]
        seen = {helps[0][1]}
        i = 0
        while i < len(helps):
            argv, what = helps[i]
            i += 1
            out = run_help(argv, cwd)
            if out is None:
                continue
            out, common = split_common(out)
            check_common(common, options_text, what)
            for m in SEE_HELP_RE.finditer(out):
                words = m.group(1).split()
                if words[0] != cmd:
                    continue
                w = "facemill %s --help" % " ".join(words)
                if w not in seen:
                    seen.add(w)
                    helps.append(([prog] + words + ["--help"], w))
            # `facemill OTHER --option` quotes another command: its options are
            # checked in that command's subsection.
            own = re.sub(r"`facemill (?!%s[ `])[^`]*`" % re.escape(cmd), "", out)
            for opt in options_of(own):
                if opt in ("-h", "--help"):
                    continue
                check(has_token(text, opt), "facemill.1 [facemill %s]: option %s (from `%s`) "
                      "missing" % (cmd, opt, what))
            subs = []
            for m in re.finditer(r"\bfacemill\s+%s\s+([a-z][a-z0-9-]*)\b" % re.escape(cmd),
                                 out):
                if m.group(1) not in subs:
                    subs.append(m.group(1))
            for sub in subs:
                check(has_token(text, "%s %s" % (cmd, sub)),
                      "facemill.1 [facemill %s]: sub-command '%s %s' (from `%s`) missing"
                      % (cmd, cmd, sub, what))


def check_daemons(bin_dir, man_dir, cwd):
    for prog in DAEMONS + BENCHES:
        page = prog + (".1" if prog in BENCHES else ".8")
        path = os.path.join(man_dir, page)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            text = page_text(f.read())
        out = run_help([os.path.join(bin_dir, prog), "--help"], cwd)
        if out is None:
            continue
        opts = options_of(out)
        if not any(o.startswith("--") and o != "--help" for o in opts):
            check(False, "`%s --help` shows no options" % prog)
        for opt in opts:
            check(has_token(text, opt), "%s: option %s (from `%s --help`) missing"
                  % (page, opt, prog))
        if reads_config(os.path.join(bin_dir, prog), cwd):
            for opt in ("--config", "--set"):
                check(opt in opts, "`%s --help`: %s missing, though %s reads it"
                      % (prog, opt, prog))
            check(has_token(text, "FACEMILL_CONFIG"), "%s: FACEMILL_CONFIG missing, "
                  "though %s reads it" % (page, prog))


def reads_config(argv0, cwd):
    """Whether a program reads --config FILE (and so FACEMILL_CONFIG): given a file
    that does not exist, it fails naming it, not the option."""
    missing = os.path.join(cwd, "no-such-dir", "facemill.yaml")
    try:
        p = subprocess.run([argv0, "--config", missing], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                           timeout=HELP_TIMEOUT, universal_newlines=True)
    except (OSError, subprocess.TimeoutExpired):
        return False
    first = p.stderr.split("\n")[0]
    return p.returncode == 2 and missing in first


def check_keys(bin_dir, man_dir, cwd):
    path = os.path.join(man_dir, "facemill.yaml.5")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        source = f.read()
    sh, _ = sections(source)
    text = sh.get("KEYS", page_text(source))
    argv = [os.path.join(bin_dir, "facemill"), "config", "--describe"]
    out = run_help(argv, cwd)
    if out is None:
        return
    keys = [m.group(1) for m in map(KEY_RE.match, out.split("\n")) if m]
    if not keys:
        check(False, "`facemill config --describe` printed no keys")
        return
    for key in keys:
        check(has_token(text, key), "facemill.yaml.5: key %s (from `facemill config "
              "--describe`) missing in KEYS" % key)


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    bin_dir, man_dir = (os.path.abspath(a) for a in sys.argv[1:])
    for d in (bin_dir, man_dir):
        if not os.path.isdir(d):
            print("test_manpages: %s: not a directory" % d, file=sys.stderr)
            return 2
    # The help commands run in an empty directory with no configuration file, so
    # that nothing around them changes what they print.
    env_keep = os.environ.pop("FACEMILL_CONFIG", None)
    try:
        with tempfile.TemporaryDirectory(prefix="test_manpages.") as cwd:
            lint(man_dir)
            check_facemill(bin_dir, man_dir, cwd)
            check_daemons(bin_dir, man_dir, cwd)
            check_keys(bin_dir, man_dir, cwd)
    finally:
        if env_keep is not None:
            os.environ["FACEMILL_CONFIG"] = env_keep
    if check.failures:
        print("\nmissing or wrong (%d):" % len(check.failures))
        for f in check.failures:
            print("  " + f.split("\n")[0])
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
