#!/usr/bin/python3
"""test_report.py - `facemill report` pages, rendered by headless Chromium.

    test_report.py --bin BUILD/bin --src SRC [--keep DIR]

1. The sample photos, labelled for real: four as files, two as members of a tar
   archive, plus a truncated JPEG and a GIF (failures), by `facemill label`; then one
   original is deleted. The page: no console message and no script error in
   Chromium, the script ran (body data-ready), every count in the DOM equal to the
   database's own (read here with Python's sqlite3, not through facemill), chart
   totals equal to the faces counted, each gallery face's labels equal to its row,
   thumbnails of files and of archive members decode as JPEGs of the chosen size,
   the deleted original a placeholder, the failures listed with their reasons, the
   filters (a fragment such as #gender=female&conf=0.9) showing exactly the faces
   that match, nothing loaded from elsewhere, and a screenshot taken.
2. A generated database (tests/make_results: 6,000 images, failures of six kinds,
   missing originals): counts and failure kinds against SQL, the failure list cut at
   its bound, the page under its size bound; --thumbs DIR writes the thumbnails
   beside the page and links them.

Exit 0 pass, 1 fail, 77 skip (no Chromium, or no models: run models/fetch).
"""
import argparse
import base64
import glob
import html.parser
import os
import re
import shutil
import sqlite3
import sys
import tarfile
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fm_testlib import Checks, run  # noqa: E402

SKIP = 77
PAGE_BOUND = 4_500_000  # include/facemill/report.h: 201 thumbnails x 16 KiB x 4/3 + text
check = Checks("test_report")


class Dom(html.parser.HTMLParser):
    """The rendered DOM, reduced to what the checks read: elements by id, face
    figures (attributes, thumbnail or placeholder, hidden or not), failure rows,
    chart bars, and the body's attributes."""

    def __init__(self):
        super().__init__()
        self.ids, self.faces, self.failures, self.bars, self.kinds = {}, [], [], {}, []
        self.body = {}
        self.stack = []   # open elements: (tag, attrs)
        self.text_of = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if "id" in a:
            self.ids[a["id"]] = a
        cls = a.get("class", "").split()
        if tag == "figure" and "face" in cls:
            a["_hidden"] = "hide" in cls
            a["_img"] = None
            a["_ph"] = False
            self.faces.append(a)
        if self.faces and self.in_face():
            f = self.faces[-1]
            if tag == "img":
                f["_img"] = a.get("src")
            if tag == "div" and "ph" in cls:
                f["_ph"] = True
        if tag == "tr" and "data-kind" in a:
            table = self.enclosing("table")
            (self.kinds if table == "failure-kinds" else self.failures).append(a)
        if tag == "rect" and "data-count" in a:
            svg = self.enclosing("svg")
            self.bars.setdefault(svg, []).append(int(a["data-count"]))
        if tag not in ("img", "br", "input", "meta", "line", "rect", "path"):
            self.stack.append((tag, a))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        if self.stack and "id" in self.stack[-1][1]:
            self.ids[self.stack[-1][1]["id"]]["_text"] = \
                self.ids[self.stack[-1][1]["id"]].get("_text", "") + data

    def in_face(self):
        return any(t == "figure" and "face" in a.get("class", "") for t, a in self.stack)

    def enclosing(self, tag):
        for t, a in reversed(self.stack):
            if t == tag:
                return a.get("id")
        return None


def chromium_binary():
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name)
        if p:
            return p
    return None


def chromium(browser, args, url, tmp):
    """Runs headless Chromium on url; returns (stdout, console lines)."""
    profile = tempfile.mkdtemp(prefix="chrome.", dir=tmp)
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-extensions", "--user-data-dir=" + profile, "--enable-logging=stderr",
           "--v=0", "--virtual-time-budget=5000"] + args + [url]
    p = run(cmd, timeout=180)
    console = [ln for ln in p.stderr.splitlines() if ":CONSOLE" in ln]
    if p.returncode != 0:
        print(p.stderr[-3000:], file=sys.stderr)
    check(p.returncode == 0, "chromium exits 0 on %s" % url)
    return p.stdout, console


def render(browser, page, tmp, fragment=""):
    out, console = chromium(browser, ["--dump-dom"], "file://" + page + fragment, tmp)
    check(not console, "no console message from the page%s: %s" % (fragment, console[:3]))
    d = Dom()
    d.feed(out)
    check(d.body.get("data-ready") == "1", "the page's script ran%s" % fragment)
    check("data-js-error" not in d.body,
          "no script error%s (%s)" % (fragment, d.body.get("data-js-error")))
    return d


def q(db, sql, args=()):
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def jpeg_size(data):
    """(width, height) from a baseline or progressive JPEG's SOF marker, or None."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        m = data[i + 1]
        seg = int.from_bytes(data[i + 2:i + 4], "big")
        if m in (0xC0, 0xC1, 0xC2):
            return (int.from_bytes(data[i + 7:i + 9], "big"),
                    int.from_bytes(data[i + 5:i + 7], "big"))
        i += 2 + seg
    return None


def self_contained(path):
    text = open(path, encoding="utf-8").read()
    ext = re.findall(r'(?:src|href)\s*=\s*"(?:https?:)?//[^"]*"|url\(\s*["\']?(?:https?:)?//'
                     r'|@import|<link\b', text)
    check(not ext, "%s: nothing loaded from elsewhere (%s)" % (os.path.basename(path), ext[:3]))
    return text


def common_checks(d, db, page, per_cell=3, extremes=24, max_failures=100):
    """Counts, failure kinds, failure list and chart totals against the database."""
    images, faces, failed, no_faces = q(db, "SELECT count(*), coalesce(sum(n_faces), 0),"
                                            " coalesce(sum(error_code != 0), 0),"
                                            " coalesce(sum(error_code = 0 AND n_faces = 0), 0)"
                                            " FROM images")[0]
    for key, want in (("n-images", images), ("n-faces", faces), ("n-failed", failed),
                      ("n-no-faces", no_faces)):
        got = d.ids.get(key, {}).get("data-value")
        check(got == str(want), "#%s is %s (database: %s)" % (key, got, want))
    kinds = {int(r["data-code"]): int(r["data-count"]) for r in d.kinds}
    want = dict(q(db, "SELECT error_code, count(*) FROM images WHERE error_code != 0"
                      " GROUP BY error_code"))
    check(kinds == want, "failures by kind %s (database: %s)" % (kinds, want))
    listed = [r["data-kind"] for r in d.failures]
    want_list = q(db, "SELECT error_code FROM images WHERE error_code != 0"
                      " ORDER BY source, job_id LIMIT ?", (max_failures,))
    names = {1: "decode", 2: "unsupported", 3: "limit", 4: "io", 7: "quarantined",
             8: "timeout"}
    check(listed == [names.get(c, "error") for (c,) in want_list],
          "failed images listed by source, up to %d (%d listed, %d failed)" %
          (max_failures, len(listed), failed))
    shown = d.ids.get("failures-shown", {})
    check(shown.get("data-total") == str(failed) and
          shown.get("data-shown") == str(min(failed, max_failures)),
          "the failure list says how many of how many (%s)" % shown.get("_text"))
    with_age = q(db, "SELECT count(*) FROM faces WHERE age IS NOT NULL")[0][0]
    # the gender and ethnicity charts have a "withheld" bar (class null, probabilities
    # given): every face with probabilities is in one bar
    with_gender = q(db, "SELECT count(*) FROM faces WHERE p_male IS NOT NULL")[0][0]
    with_race = q(db, "SELECT count(*) FROM faces WHERE p_white IS NOT NULL")[0][0]
    for chart, col, prob in (("chart-gender", "gender", "p_male"), ("chart-race", "race",
                                                                     "p_white")):
        bars = d.bars.get(chart, [])
        held = q(db, "SELECT count(*) FROM faces WHERE %s IS NULL AND %s IS NOT NULL" %
                 (col, prob))[0][0]
        check(bars and bars[-1] == held, "%s: the withheld bar counts %s (database: %d)" %
              (chart, bars[-1:] or None, held))
    labelled = q(db, "SELECT count(*) FROM images WHERE error_code = 0")[0][0]
    for chart, want in (("chart-age", with_age), ("chart-gender", with_gender),
                        ("chart-race", with_race), ("chart-faces", labelled),
                        ("chart-score", faces), ("chart-size", faces)):
        got = sum(d.bars.get(chart, []))
        check(got == want, "%s counts %d (database: %d)" % (chart, got, want))
    check(len(d.faces) <= 2 * 5 * 5 * per_cell + per_cell + 2 * extremes,
          "the gallery is bounded (%d faces)" % len(d.faces))
    size = os.path.getsize(page)
    check(size < PAGE_BOUND, "page of %d bytes, under %d" % (size, PAGE_BOUND))
    return images, faces, failed


def face_labels_match(d, db):
    rows = {(r[0], r[1]): r[2:] for r in q(
        db, "SELECT image_id, face, gender, race, age, p_male IS NOT NULL,"
            " CASE WHEN p_male >= p_female THEN 'male' ELSE 'female' END,"
            " CASE max(p_white, p_black, p_asian, p_indian, p_others) WHEN p_white THEN"
            " 'White' WHEN p_black THEN 'Black' WHEN p_asian THEN 'Asian' WHEN p_indian"
            " THEN 'Indian' ELSE 'Others' END FROM faces")}
    bad, withheld = [], 0
    for f in d.faces:
        key = (int(f["data-image"]), int(f["data-face"]))
        r = rows.get(key)
        if r is None:
            bad.append((key, None))
            continue
        gender, race, age, has_probs, top_gender, top_race = r
        if not has_probs:
            continue
        # A class withheld (null in the row, heads.*_min_prob) is marked and the face
        # still sits in its most probable class's cell.
        marks = f.get("data-withheld", "").split()
        withheld += bool(marks)
        if (("gender" in marks) != (gender is None) or ("race" in marks) != (race is None) or
                f.get("data-gender") != (gender or top_gender) or
                f.get("data-race") != (race or top_race) or
                abs(float(f["data-age"]) - age) > 0.051):
            bad.append((key, r, f.get("data-gender"), f.get("data-race"), marks))
    check(not bad, "every gallery face shows its row's gender, ethnicity and age, a withheld "
          "class marked (%d withheld; %s)" % (withheld, bad[:3]))


def filter_checks(browser, d, page, tmp):
    """A filter given in the fragment shows exactly the faces that match it."""
    want = sum(1 for f in d.faces if f.get("data-gender") == "female" and
               float(f.get("data-conf", "1")) < 0.9)
    fd = render(browser, page, tmp, "#gender=female&conf=0.9")
    shown = [f for f in fd.faces if not f["_hidden"]]
    ok = all(f.get("data-gender") == "female" and float(f["data-conf"]) < 0.9 for f in shown)
    check(ok and len(shown) == want,
          "#gender=female&conf=0.9 shows the %d matching faces (%d shown)" % (want, len(shown)))
    check(fd.ids.get("f-shown", {}).get("_text") == str(want),
          "the filter's count says %s" % fd.ids.get("f-shown", {}).get("_text"))
    check(len(fd.faces) == len(d.faces), "filtering hides, it does not remove")


def case_samples(a, browser, tmp):
    samples = sorted(glob.glob(os.path.join(a.src, "models", "cache", "samples", "*.jpg")))
    if len(samples) < 6:
        raise SystemExit(SKIP)
    work = os.path.join(tmp, "samples")
    photos = os.path.join(work, "photos")
    os.makedirs(photos)
    for s in samples[:4]:
        shutil.copy(s, photos)
    data = open(samples[0], "rb").read()
    open(os.path.join(photos, "bad_truncated.jpg"), "wb").write(data[:len(data) // 3])
    open(os.path.join(photos, "not_a_jpeg.jpg"), "wb").write(b"GIF89a" + b"\0" * 64)
    with tarfile.open(os.path.join(work, "archive.tar"), "w") as t:
        for s in samples[4:6]:
            t.add(s, arcname="arch/" + os.path.basename(s))
    db = os.path.join(work, "labels.db")
    # with the recommended gender threshold, so some faces have their gender withheld
    # (the "withheld" bars and marks are checked against the rows)
    p = run([os.path.join(a.bin, "facemill"), "label", "photos", "archive.tar", "-o", db,
             "-j", "2", "--progress", "none", "--set", "heads.gender_min_prob=0.85"],
            cwd=work, timeout=900)
    check(p.returncode == 1, "facemill label exits 1 (two bad inputs): %d %s" %
          (p.returncode, p.stderr[-500:]))
    gone = os.path.join(photos, os.path.basename(samples[3]))
    os.remove(gone)  # a missing original: its faces get placeholders
    page = os.path.join(work, "report.html")
    p = run([os.path.join(a.bin, "facemill"), "report", db, "-o", page], cwd=work, timeout=300)
    check(p.returncode == 0, "facemill report exits 0: %s" % p.stderr.strip())
    self_contained(page)
    d = render(browser, page, tmp)
    images, faces, failed = common_checks(d, db, page)
    check(images == 8 and failed == 2 and faces > 10,
          "the samples: 8 images, 2 failed, %d faces" % faces)
    face_labels_match(d, db)
    kinds = sorted(r["data-kind"] for r in d.failures)
    check(kinds == ["decode", "unsupported"], "the two bad files listed: %s" % kinds)
    by_source = {}
    for f in d.faces:
        by_source.setdefault(f["title"], []).append(f)
    member = [f for s, fs in by_source.items() if s.startswith("archive.tar:arch/") for f in fs]
    missing = [f for s, fs in by_source.items() if s.endswith(os.path.basename(gone))
               for f in fs]
    files = [f for s, fs in by_source.items() if s.startswith("photos/") and
             not s.endswith(os.path.basename(gone)) for f in fs]
    check(member and all(f["_img"] for f in member),
          "faces of archive members have thumbnails (%d)" % len(member))
    check(files and all(f["_img"] for f in files), "faces of files have thumbnails (%d)" %
          len(files))
    check(missing and all(f["_ph"] and not f["_img"] for f in missing),
          "faces of the deleted original are placeholders (%d)" % len(missing))
    sizes = set()
    for f in member + files:
        src = f["_img"]
        ok = src.startswith("data:image/jpeg;base64,")
        sizes.add(jpeg_size(base64.b64decode(src.split(",", 1)[1])) if ok else None)
    check(sizes == {(96, 96)}, "thumbnails are 96x96 JPEG data URIs (%s)" % sizes)
    check(d.ids.get("f-shown", {}).get("_text") == str(len(d.faces)),
          "unfiltered, every face is shown (%s of %d)" %
          (d.ids.get("f-shown", {}).get("_text"), len(d.faces)))
    filter_checks(browser, d, page, tmp)
    # From elsewhere, --root finds the same originals.
    page2 = os.path.join(tmp, "elsewhere.html")
    p = run([os.path.join(a.bin, "facemill"), "report", db, "-o", page2, "--root", work],
            cwd=tmp, timeout=300)
    d2 = render(browser, page2, tmp)
    check(p.returncode == 0 and sum(1 for f in d2.faces if f["_img"]) ==
          sum(1 for f in d.faces if f["_img"]),
          "--root: the same thumbnails from another directory")
    shot = os.path.join(tmp, "report.png")
    chromium(browser, ["--screenshot=" + shot, "--window-size=1400,3200", "--hide-scrollbars"],
             "file://" + page, tmp)
    check(os.path.exists(shot) and os.path.getsize(shot) > 50000,
          "a screenshot of the page (%s)" % shot)
    if a.keep:
        shutil.copy(shot, os.path.join(a.keep, "report-samples.png"))
        shutil.copy(page, os.path.join(a.keep, "report-samples.html"))


def case_generated(a, browser, tmp):
    work = os.path.join(tmp, "gen")
    os.makedirs(work)
    db = os.path.join(work, "gen.db")
    tool = os.path.join(os.path.dirname(a.bin), "tests", "make_results")
    p = run([tool, db, "6000", "--fail-every", "9"], timeout=300)
    check(p.returncode == 0, "make_results: %s" % (p.stdout + p.stderr).strip())
    page = os.path.join(work, "gen.html")
    p = run([os.path.join(a.bin, "facemill"), "report", db, "-o", page], cwd=work, timeout=300)
    check(p.returncode == 0, "facemill report exits 0: %s" % p.stderr.strip())
    self_contained(page)
    d = render(browser, page, tmp)
    images, faces, failed = common_checks(d, db, page)
    check(images == 6000 and failed == 667, "6000 images, 667 failed (%d, %d)" %
          (images, failed))
    check(len(d.kinds) == 6, "six kinds of failure (%d)" % len(d.kinds))
    check(len(d.failures) == 100, "the failure list stops at 100 (%d)" % len(d.failures))
    face_labels_match(d, db)
    check(d.faces and all(f["_ph"] for f in d.faces),
          "generated sources do not exist: every face a placeholder")
    filter_checks(browser, d, page, tmp)
    # --thumbs: files beside the page, linked relative to it.
    samples = sorted(glob.glob(os.path.join(a.src, "models", "cache", "samples", "*.jpg")))
    db2 = os.path.join(work, "photos.db")
    p = run([tool, db2, "400", "--fail-every", "5", "--photo-every", "1"] +
            sum((["--photo", s] for s in samples), []), timeout=300)
    check(p.returncode == 0, "make_results with photos: %s" % (p.stdout + p.stderr).strip())
    page2 = os.path.join(work, "photos.html")
    p = run([os.path.join(a.bin, "facemill"), "report", db2, "-o", page2, "--thumbs",
             os.path.join(work, "thumbs"), "--per-cell", "2", "--extremes", "5"],
            cwd=work, timeout=300)
    check(p.returncode == 0, "facemill report --thumbs exits 0: %s" % p.stderr.strip())
    d2 = render(browser, page2, tmp)
    srcs = [f["_img"] for f in d2.faces if f["_img"]]
    ok = bool(srcs) and all(s.startswith("thumbs/f") and s.endswith(".jpg") and
                            jpeg_size(open(os.path.join(work, s), "rb").read()) == (96, 96)
                            for s in srcs)
    check(ok, "--thumbs: %d thumbnails linked as thumbs/*.jpg, each a 96x96 JPEG" % len(srcs))
    nested = os.path.join(work, "new", "deeper", "thumbs")
    p = run([os.path.join(a.bin, "facemill"), "report", db2, "-o",
             os.path.join(work, "nested.html"), "--thumbs", nested], cwd=work, timeout=300)
    check(p.returncode == 0 and os.path.isdir(nested) and
          any(n.endswith(".jpg") for n in os.listdir(nested)),
          "--thumbs DIR with missing parents: made, thumbnails in it (%s)" %
          p.stderr.strip()[-300:])
    check(len(d2.faces) <= 2 * 5 * 5 * 2 + 2 + 2 * 5, "--per-cell 2 --extremes 5 bound the "
          "gallery (%d faces)" % len(d2.faces))
    check(os.path.getsize(page2) < 200000, "with --thumbs the page holds no image data "
          "(%d bytes)" % os.path.getsize(page2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--keep", help="copy the page and screenshot of the samples here")
    a = ap.parse_args()
    a.bin, a.src = os.path.abspath(a.bin), os.path.abspath(a.src)
    browser = chromium_binary()
    if not browser:
        print("skip: no chromium (ops/deps installs it)")
        return SKIP
    if not os.path.exists(os.path.join(a.src, "models", "cache", "mtcnn_pnet.fmm")):
        print("skip: no models (run models/fetch)")
        return SKIP
    tmp = tempfile.mkdtemp(prefix="fmreport.")
    try:
        case_samples(a, browser, tmp)
        case_generated(a, browser, tmp)
    finally:
        check.done_with(tmp)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
