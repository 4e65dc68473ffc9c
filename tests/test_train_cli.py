#!/usr/bin/python3
"""test_train_cli.py - `facemill train` (fine-tuning) end to end through the program,
on a small set of real face photos: UTKFace-named crops of the sample photos' faces,
labelled with the default model's own answers.

- `facemill eval --save-results` writes a teacher file for the set;
- `facemill train` from the default model with --init-heads, --head-epochs 0,
  --teacher and --teacher-weight, --degrade and --degrade-kinds, one epoch: exit 0,
  the log says how many training faces have the teacher's answers, both files are
  written, the heads record the command (--teacher and all) in heads.train.command,
  and the new pair labels a photo;
- a teacher file whose labels differ from the set's is refused (exit 1, naming it);
  --teacher-weight without --teacher is a usage error (exit 2), --teacher-weight 0 is
  taken as given; --init-heads (found by name through the model search path) of heads
  made for another backbone is refused, and so is fine-tuning with a detect.mode
  other than mtcnn;
- a folder of no UTKFace-named image is refused naming it (exit 1); -o and --heads
  naming one file (under any name), a --checkpoint that is one of them, --momentum
  without --optimizer sgd, --step-gamma or --step-epochs without --schedule step and
  --drop-below without --drop-hardest are usage errors (exit 2, one line).

Exit 0 pass, 1 fail, 77 skip (no models: run models/fetch; no python3-pil: only the
refusals run).
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fm_testlib import Checks, json_records as records, run, top_class as top  # noqa: E402

check = Checks("test_train_cli")
GENDERS = ["male", "female"]
RACES = ["White", "Black", "Asian", "Indian", "Others"]


def refusals(fm, tmp, photo):
    """What fine-tuning refuses before it starts: a folder of no UTKFace-named image
    (exit 1, naming the folder), and as usage errors (exit 2, one line, nothing logged
    before) the backbone and the heads in one file, and options of an optimizer,
    schedule or selection not chosen."""
    unnamed = os.path.join(tmp, "unnamed")
    os.makedirs(unnamed)
    with open(photo, "rb") as src, open(os.path.join(unnamed, "photo.jpg"), "wb") as dst:
        dst.write(src.read())
    out, heads = os.path.join(tmp, "r.fmm"), os.path.join(tmp, "rh.fmm")
    base = [fm, "train", "--train", unnamed, "--jobs", "1", "--threads", "1"]
    r = run(base + ["-o", out, "--heads", heads], timeout=120)
    check(r.returncode == 1 and unnamed + ": fewer than 2 labelled images" in r.stderr and
          "1 other .jpg file name(s) skipped" in r.stderr and "image rows" not in r.stderr,
          "a folder of no UTKFace-named image is refused, naming it (%d): %s" %
          (r.returncode, r.stderr.strip()[-300:]))
    cases = [
        (["-o", out, "--heads", out], "are the same file"),
        (["-o", out, "--heads", os.path.join(tmp, ".", "r.fmm")], "are the same file"),
        (["-o", out, "--heads", heads, "--checkpoint", heads],
         "--checkpoint %s is the same file as --heads" % heads),
        (["-o", out, "--heads", heads, "--momentum", "0.5"],
         "--momentum needs --optimizer sgd"),
        (["-o", out, "--heads", heads, "--optimizer", "adamw", "--momentum", "0.9"],
         "--momentum needs --optimizer sgd"),
        (["-o", out, "--heads", heads, "--step-gamma", "0.5"],
         "--step-gamma needs --schedule step"),
        (["-o", out, "--heads", heads, "--step-epochs", "1"],
         "--step-epochs needs --schedule step"),
        (["-o", out, "--heads", heads, "--drop-below", "0.5"],
         "--drop-below needs --drop-hardest"),
        (["-o", out, "--heads", heads, "--drop-hardest", "0", "--drop-below", "0.5"],
         "--drop-below needs --drop-hardest"),
    ]
    with open(out, "wb") as f:  # an existing file too: the same inode under two names
        f.write(b"x")
    link = os.path.join(tmp, "link.fmm")
    os.symlink(out, link)
    cases.append((["-o", out, "--heads", link], "are the same file"))
    for args, want in cases:
        r = run(base + args, timeout=120)
        check(r.returncode == 2 and want in r.stderr and len(r.stderr.splitlines()) == 1,
              "%s: a usage error, alone (%d): %s" % (" ".join(args).replace(tmp, "TMP"),
                                                     r.returncode, r.stderr.strip()[-300:]))
    os.remove(link)
    os.remove(out)
    check(not os.path.exists(heads), "nothing written by a refusal")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--src", required=True)
    a = ap.parse_args()
    cache = os.path.join(a.src, "models", "cache")
    samples = [os.path.join(cache, "samples", "sample%d.jpg" % i) for i in range(1, 7)]
    heads = os.path.join(a.src, "models", "heads_dlib_ft.fmm")
    if not all(os.path.exists(p) for p in samples + [heads]) or not os.path.exists(
            os.path.join(cache, "dlib_resnet_ft.fmm")):
        print("skip: no models or sample photos (run models/fetch)")
        return 77
    fm = os.path.join(os.path.abspath(a.bin), "facemill")
    tmp = tempfile.mkdtemp(prefix="fmtrain.")
    try:
        refusals(fm, tmp, samples[0])  # needs no python3-pil
        try:
            from PIL import Image
        except ImportError:
            check.skip("the training runs: python3-pil is not installed")
            return check.summary()
        # the set: each sample face cropped square with room around it, named
        # AGE_GENDER_RACE_n.jpg after the default model's answers
        r = run([fm, "predict", "-q"] + samples, timeout=300)
        data = os.path.join(tmp, "set")
        os.makedirs(data)
        n = 0
        for o in records(r):
            img = Image.open(o["source"]).convert("RGB")
            for f in o["faces"]:
                b = f["box"]
                cx, cy = (b["x1"] + b["x2"]) / 2, (b["y1"] + b["y2"]) / 2
                half = 0.75 * max(b["x2"] - b["x1"], b["y2"] - b["y1"])
                crop = img.crop((round(cx - half), round(cy - half), round(cx + half),
                                 round(cy + half))).resize((200, 200), Image.LANCZOS)
                name = "%d_%d_%d_%02d.jpg" % (round(f["age"]),
                                              GENDERS.index(top(f["gender_probs"])),
                                              RACES.index(top(f["race_probs"])), n)
                crop.save(os.path.join(data, name), quality=92)
                n += 1
        check(n >= 16, "a set of sample faces (%d)" % n)

        teacher = os.path.join(tmp, "teacher.jsonl")
        r = run([fm, "eval", "-q", "--data", data, "--save-results", teacher], timeout=300)
        check(r.returncode == 0 and os.path.exists(teacher),
              "eval --save-results writes the teacher file (%d): %s" %
              (r.returncode, r.stderr[-300:]))

        out, out_heads = os.path.join(tmp, "b.fmm"), os.path.join(tmp, "h.fmm")
        base = [fm, "train", "--set", "embed.backbone=dlib_resnet_ft.fmm", "--train", data,
                "--holdout", "0.25", "--init-heads", "heads_dlib_ft.fmm", "--head-epochs", "0",
                "--epochs", "1", "--batch", "4", "--jobs", "1", "--threads", "1",
                "--degrade", "0.5", "--degrade-kinds", "gray,occlude", "--seed", "3"]
        r = run(base + ["-o", out, "--heads", out_heads, "--teacher", teacher,
                        "--teacher-weight", "0.7"], timeout=600)
        check(r.returncode == 0, "train with --teacher exits 0 (%d): %s" %
              (r.returncode, r.stderr[-500:]))
        line = [x for x in r.stderr.splitlines() if "teacher " in x and "answers for" in x]
        check(len(line) == 1 and "weight 0.7" in line[0],
              "the log says how many faces have the teacher's answers: %s" % line)
        check(os.path.exists(out) and os.path.exists(out_heads), "both files written")
        # heads.train.command, as stored (`model info` shortens long strings)
        raw = open(out_heads, "rb").read() if os.path.exists(out_heads) else b""
        at = raw.find(b"facemill train ")
        cmd_line = raw[at:raw.find(b"\0", at) if b"\0" in raw[at:] else at + 2000] \
            if at >= 0 else b""
        check(b"heads.train.command" in raw and b"--teacher " + teacher.encode() in cmd_line
              and b"--init-heads" in cmd_line and b"--degrade-kinds gray,occlude" in cmd_line,
              "the heads record the command (--teacher, --init-heads, --degrade-kinds)")
        r = run([fm, "predict", "-q", "--set", "embed.backbone=" + out, "--set",
                 "heads.model=" + out_heads, samples[0]], timeout=300)
        got = records(r)
        check(r.returncode == 0 and got and got[0]["faces"] and "age" in got[0]["faces"][0],
              "the trained pair labels a photo (%d)" % r.returncode)

        # a teacher file of other labels: refused
        bad = os.path.join(tmp, "bad.jsonl")
        with open(teacher) as src, open(bad, "w") as dst:
            for i, row in enumerate(src):
                o = json.loads(row)
                if i == 0:
                    o["true_age"] = (o["true_age"] + 7) % 100
                dst.write(json.dumps(o, separators=(",", ":")) + "\n")
        r = run(base + ["-o", os.path.join(tmp, "b2.fmm"), "--heads",
                        os.path.join(tmp, "h2.fmm"), "--teacher", bad], timeout=600)
        check(r.returncode == 1 and "other labels" in r.stderr and
              not os.path.exists(os.path.join(tmp, "h2.fmm")),
              "a teacher file of other labels is refused (%d): %s" %
              (r.returncode, r.stderr.strip()[-200:]))
        r = run(base + ["-o", out, "--heads", out_heads, "--teacher-weight", "0.5"],
                timeout=60)
        check(r.returncode == 2 and "--teacher-weight needs --teacher" in r.stderr,
              "--teacher-weight alone is a usage error (%d)" % r.returncode)
        r = run(base + ["-o", os.path.join(tmp, "b3.fmm"), "--heads",
                        os.path.join(tmp, "h3.fmm"), "--teacher", teacher, "--teacher-weight",
                        "0"], timeout=600)
        line = [x for x in r.stderr.splitlines() if "teacher " in x and "answers for" in x]
        check(r.returncode == 0 and len(line) == 1 and "(weight 0;" in line[0],
              "--teacher-weight 0 is taken as given: %s" % line)

        # refusals before any training: heads made for another backbone, a detect.mode
        # without the detector
        r = run(base[:3] + ["embed.backbone=dlib_resnet.fmm"] + base[4:] +
                ["-o", os.path.join(tmp, "b4.fmm"), "--heads", os.path.join(tmp, "h4.fmm")],
                timeout=600)
        check(r.returncode == 1 and "made for the backbone" in r.stderr,
              "--init-heads of another backbone's heads is refused (%d): %s" %
              (r.returncode, r.stderr.strip()[-200:]))
        r = run(base + ["--set", "detect.mode=cropped", "-o", os.path.join(tmp, "b5.fmm"),
                        "--heads", os.path.join(tmp, "h5.fmm")], timeout=600)
        check(r.returncode == 1 and "detect.mode must be mtcnn" in r.stderr,
              "fine-tuning refuses detect.mode=cropped (%d): %s" %
              (r.returncode, r.stderr.strip()[-200:]))
    finally:
        check.done_with(tmp)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
