#!/usr/bin/env python3
"""test_layers.py - no folder includes a header of a layer above it.

The layers (README.md, "What is here"):

    worker/base < worker/engine < worker/vision < worker/pipeline < worker/train
    worker/base < broker/wire < broker/queue, broker/sink < broker/client
    worker/cli/report (facemill report): vision, sink and below
    worker/daemon, worker/cli: the programs, on top

Every public header in include/facemill/ belongs to one layer (HEADERS below; a new
header must be placed there or this test fails). A source or private header in a
folder may include public headers of its own layer and of the layers it stands on,
and private headers ("name.h") only from its own folder; a public header follows the
rules of its layer. Each CMake library also sees only its own folder's private
headers, so an upward private include does not even compile; this test covers the
public ones.

Usage: test_layers.py SRC
Exit 0 pass, 1 fail.
"""
import os
import re
import sys

# layer -> the layers it may include (itself included)
BELOW = {
    "base": {"base"},
    "engine": {"base", "engine"},
    "vision": {"base", "engine", "vision"},
    "pipeline": {"base", "engine", "vision", "pipeline"},
    "train": {"base", "engine", "vision", "pipeline", "train"},
    "wire": {"base", "wire"},
    "queue": {"base", "wire", "queue"},
    "sink": {"base", "wire", "sink"},
    "client": {"base", "wire", "sink", "client"},
    "daemon": {"base", "engine", "vision", "pipeline", "wire", "daemon"},
    "report": {"base", "engine", "vision", "wire", "sink", "report"},
    "cli": {"base", "engine", "vision", "pipeline", "train", "wire", "queue", "sink",
            "client", "report", "cli"},
}
# public header -> its layer
HEADERS = {
    "status": "base", "log": "base", "json": "base", "config": "base", "sha256": "base",
    "notify": "base", "clock": "base", "result_json": "base", "metrics": "base",
    "text": "base", "file": "base",
    "nn": "engine", "model": "engine", "grad": "engine", "blas": "engine",
    "image": "vision", "detect": "vision", "align": "vision", "backbone": "vision",
    "heads": "vision", "dlib_resnet": "vision", "draw": "vision", "degrade": "vision",
    "pipeline": "pipeline", "eval": "pipeline", "modelpath": "pipeline",
    "train": "train", "finetune": "train", "trainset": "train",
    "wire": "wire", "auth": "wire", "status_metrics": "wire", "broker": "queue",
    "sink": "sink", "client": "client",
    "report": "report",
}
# folder -> layer
FOLDERS = {
    "worker/base": "base", "worker/engine": "engine", "worker/vision": "vision",
    "worker/pipeline": "pipeline", "worker/train": "train", "worker/daemon": "daemon",
    "worker/cli": "cli", "worker/cli/report": "report", "broker/wire": "wire", "broker/queue": "queue",
    "broker/sink": "sink", "broker/client": "client",
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def main():
    src = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
    problems, files = [], 0
    units = []  # (path relative to src, layer, folder or None)
    for folder, layer in FOLDERS.items():
        d = os.path.join(src, folder)
        if not os.path.isdir(d):
            problems.append("%s: folder missing" % folder)
            continue
        for f in sorted(os.listdir(d)):
            if f.endswith((".c", ".h")):
                units.append((os.path.join(folder, f), layer, folder))
    for folder in ("worker", "broker"):
        for f in sorted(os.listdir(os.path.join(src, folder))):
            if f.endswith((".c", ".h")):
                problems.append("%s/%s: a file outside the layer folders" % (folder, f))
    inc = os.path.join(src, "include", "facemill")
    for f in sorted(os.listdir(inc)):
        name = f[:-2]
        if name not in HEADERS:
            problems.append("include/facemill/%s: in no layer (add it to HEADERS)" % f)
            continue
        units.append((os.path.join("include", "facemill", f), HEADERS[name], None))
    for rel, layer, folder in units:
        files += 1
        text = open(os.path.join(src, rel), encoding="utf-8").read()
        for target in INCLUDE.findall(text):
            if target.startswith("facemill/"):
                name = target[len("facemill/"):-2]
                if name.endswith(".pb-c"):  # the generated protocol code: wire
                    hl = "wire"
                else:
                    hl = HEADERS.get(name)
                if hl is None:
                    problems.append("%s includes %s, a header in no layer" % (rel, target))
                elif hl not in BELOW[layer]:
                    problems.append("%s (%s) includes %s (%s): a layer above it, or beside"
                                    % (rel, layer, target, hl))
            elif target.endswith(".pb-c.h"):
                if "wire" not in BELOW[layer]:
                    problems.append("%s (%s) includes the protocol's generated code" %
                                    (rel, layer))
            elif folder is None:
                problems.append("%s: a public header includes a private one (%s)" %
                                (rel, target))
            elif "/" in target or not os.path.isfile(os.path.join(src, folder, target)):
                problems.append("%s includes %s, which is not in its own folder" %
                                (rel, target))
    for p in problems:
        print("FAIL:", p, file=sys.stderr)
    print("test_layers: %d files, %d problems" % (files, len(problems)), file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
