#!/usr/bin/python3
"""abstain_curve: coverage against accuracy of gender and ethnicity when facemill
abstains below a probability (heads.gender_min_prob, heads.race_min_prob), by age band,
from the per-image results of `facemill eval --save-results`.

Why this exists: the abstention thresholds are chosen on the training hold-out (never
on val), and the model card's table must be computed one way. Python standard library
only.

For each threshold t of the grid and each age band (true age): coverage is the share
of the band's images with a face whose most probable class has probability >= t (the
faces answered), accuracy the share of answered faces answered right. Images without
a face are counted in neither (they have no probabilities).

The rule that picks the default, fixed before the hold-out was scored: the largest t
of the grid (0 included) for which coverage over the faces aged 20 and over stays at
least 98% - at most one adult face in fifty loses its label - so the abstentions fall
where the model is unsure, mostly on children, and adults keep their answers.

Usage:
  abstain_curve.py RESULTS.jsonl [--markdown]
"""
import json
import sys

GRID = [0.0, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
BANDS = [("0-9", 0, 9), ("10-19", 10, 19), ("20-39", 20, 39), ("40-59", 40, 59),
         ("60+", 60, 200), ("all", 0, 200), ("20+", 20, 200)]
ADULT_COVERAGE = 0.98


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            o = json.loads(line)
            if not o["face"]:
                continue
            rows.append(o)
    return rows


def curve(rows, attr):
    """{(t, band): (n, answered, right)}"""
    probs_key, true_key = attr + "_probs", "true_" + attr
    out = {}
    for t in GRID:
        for name, lo, hi in BANDS:
            n = ans = right = 0
            for o in rows:
                if not lo <= o["true_age"] <= hi:
                    continue
                n += 1
                p = o[probs_key]
                best = max(p, key=p.get)
                if t > 0 and p[best] < t:
                    continue
                ans += 1
                right += best == o[true_key]
            out[(t, name)] = (n, ans, right)
    return out


def choose(c):
    best = 0.0
    for t in GRID:
        n, ans, _ = c[(t, "20+")]
        if n and ans / n >= ADULT_COVERAGE:
            best = t
    return best


def table(c, attr):
    names = [b[0] for b in BANDS]
    lines = ["| %s: t | %s |" % (attr, " | ".join(names)),
             "|---:|" + "---:|" * len(names)]
    for t in GRID:
        cells = []
        for name in names:
            n, ans, right = c[(t, name)]
            cov = 100.0 * ans / n if n else 0
            acc = 100.0 * right / ans if ans else 0
            cells.append("%.1f%% / %.1f%%" % (cov, acc))
        lines.append("| %s | %s |" % ("%.2f" % t if t else "0 (never)", " | ".join(cells)))
    ns = " ".join("%s %d" % (b, c[(0.0, b)][0]) for b in names)
    lines.append("")
    lines.append("cells: coverage / accuracy of the answered faces; faces per band: " + ns)
    return "\n".join(lines)


def main(argv):
    if len(argv) < 2:
        sys.stderr.write(__doc__)
        return 2
    rows = load(argv[1])
    for attr in ("gender", "race"):
        c = curve(rows, attr)
        print(table(c, attr))
        t = choose(c)
        n, ans, right = c[(t, "20+")]
        print("\nrule (20+ coverage >= %.0f%%): %s_min_prob = %s\n"
              % (100 * ADULT_COVERAGE, attr, t))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
