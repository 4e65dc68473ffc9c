#!/usr/bin/python3
"""facenet2fmm: convert a facenet-pytorch Inception-ResNet-v1 checkpoint to a facemill
model file (architecture "facenet_irv1", run by worker/vision/arch_facenet.c).

Why this exists: facenet-pytorch publishes FaceNet's Inception-ResNet-v1 weights
(20180402-114759-vggface2.pt, 20180408-102900-casia-webface.pt) as PyTorch state dicts
with unfolded batch norm. facemill's engine has no batch norm and reads weights from
one memory-mapped file, so this converter folds every batch norm into the layer before
it and writes the tensors in the engine's layouts (models/FORMAT.md).

Usage:
  facenet2fmm.py convert IN.pt -o OUT.fmm [--margin 14] [--source TEXT] [--name TEXT]
      IN.pt: a bare state dict (what facenet-pytorch publishes and loads), a
      checkpoint dict holding one under "state_dict" / "model_state_dict" / "model",
      or a pickled module (needs facenet_pytorch importable). DataParallel "module."
      prefixes are removed. logits.* (the training classifier) and
      *.num_batches_tracked are ignored; any other unknown key is an error.
  facenet2fmm.py template [--margin 14]
      print the five-point alignment template stored in align.template

What the file holds:
  - <path>.conv.weight [O, I, KH, KW] and <path>.conv.bias [O] for every BasicConv2d
    (conv without bias + BatchNorm2d(eps 0.001) + ReLU), batch norm folded:
        k = gamma / sqrt(running_var + eps);  w' = w * k[o];  b' = beta - mean * k
  - <path>.conv2d.weight [O, I, 1, 1] and .bias [O]: each block's up-projection, as is
  - last_linear.weight [512, 1792] and last_linear.bias [512]: last_linear (no bias)
    with last_bn (BatchNorm1d, eps 0.001) folded in the same way
  (paths as in the state dict: conv2d_1a, repeat_1.0.branch1.1, mixed_7a.branch2.0, ...)
  - metadata: general.* (architecture, name, source, source_integrity, converter),
    input.size [160, 160], input.mean 127.5 and input.scale 1/128 per channel
    (facenet-pytorch's fixed_image_standardization), align.template, and the residual
    scales facenet_irv1.scale.{block35,block17,block8,block8_final} = 0.17, 0.10,
    0.20, 1.0 (the C builder reads them; out = relu(x + scale * up(branches)), the
    final block without ReLU).

Alignment template: facenet-pytorch does not align faces; it crops the MTCNN box
enlarged by a margin of `margin` pixels (of the output) and resizes it to 160x160.
facemill aligns with a similarity transform onto five landmarks, so the template is
the standard 112x112 ArcFace five-point template, scaled and shifted (no rotation) to
best match, in least squares, where an MTCNN box cropped that way puts the five
landmarks on average (MTCNN_LANDMARKS_IN_BOX, measured; see models/FACENET.md).
"""

import argparse
import base64
import collections
import collections.abc
import hashlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fmmodel import write_model  # noqa: E402

CONVERTER = "facenet2fmm 1"
ARCH = "facenet_irv1"
INPUT_SIZE = 160
BN_EPS = 0.001
SCALES = (("block35", 0.17), ("block17", 0.10), ("block8", 0.20), ("block8_final", 1.0))
DEFAULT_MARGIN = 14

# The standard ArcFace template: left eye, right eye, nose, left and right mouth
# corner (as seen in the image), in pixels of a 112x112 crop.
ARCFACE_112 = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366),
               (41.5493, 92.3655), (70.7299, 92.2041))

# Mean position of MTCNN's five landmarks inside its final (O-Net) box, as fractions
# of the box width and height from its top-left corner; measured with
# tests/reference/mtcnn_ref.py on the first face of each of the 2,118 UTKFace
# validation images (min face 40, default thresholds).
MTCNN_LANDMARKS_IN_BOX = ((0.2726, 0.3531), (0.7402, 0.3534), (0.5010, 0.5730),
                          (0.2978, 0.7368), (0.7118, 0.7362))


def template(margin=DEFAULT_MARGIN, size=INPUT_SIZE):
    """The five-point template (x0, y0, ..., x4, y4) in pixels of the size x size
    input (pixel centres at integers), for facenet-pytorch crops with this margin.

    A landmark at fraction (u, v) of an MTCNN box lands at
    (margin/2 - 0.5 + u * (size - margin), same for v) in such a crop; the ArcFace
    points p get scale s and offset t minimising sum |s * p + t - q|^2 over those
    mean positions q."""
    if not 0 <= margin < size:
        raise ValueError("margin %r is not in [0, %d)" % (margin, size))
    p = np.array(ARCFACE_112, dtype=np.float64)
    q = margin / 2.0 - 0.5 + np.array(MTCNN_LANDMARKS_IN_BOX) * (size - margin)
    pc, qc = p - p.mean(0), q - q.mean(0)
    s = (pc * qc).sum() / (pc * pc).sum()
    t = q.mean(0) - s * p.mean(0)
    return [round(float(v), 4) for v in (s * p + t).ravel()]


# ---------------------------------------------------------------------------
# The network's layers, in execution order
# ---------------------------------------------------------------------------

def _basic(path, cin, cout, kh, kw):
    return ("basic", path, (cout, cin, kh, kw))


def _block35(p):
    return [_basic(p + ".branch0", 256, 32, 1, 1),
            _basic(p + ".branch1.0", 256, 32, 1, 1),
            _basic(p + ".branch1.1", 32, 32, 3, 3),
            _basic(p + ".branch2.0", 256, 32, 1, 1),
            _basic(p + ".branch2.1", 32, 32, 3, 3),
            _basic(p + ".branch2.2", 32, 32, 3, 3),
            ("up", p + ".conv2d", (256, 96, 1, 1))]


def _block17(p):
    return [_basic(p + ".branch0", 896, 128, 1, 1),
            _basic(p + ".branch1.0", 896, 128, 1, 1),
            _basic(p + ".branch1.1", 128, 128, 1, 7),
            _basic(p + ".branch1.2", 128, 128, 7, 1),
            ("up", p + ".conv2d", (896, 256, 1, 1))]


def _block8(p):
    return [_basic(p + ".branch0", 1792, 192, 1, 1),
            _basic(p + ".branch1.0", 1792, 192, 1, 1),
            _basic(p + ".branch1.1", 192, 192, 1, 3),
            _basic(p + ".branch1.2", 192, 192, 3, 1),
            ("up", p + ".conv2d", (1792, 384, 1, 1))]


def layers():
    """[(kind, path, weight shape)], kind "basic" (conv + bn), "up" (conv with bias)
    or "dense" (last_linear + last_bn)."""
    out = [_basic("conv2d_1a", 3, 32, 3, 3), _basic("conv2d_2a", 32, 32, 3, 3),
           _basic("conv2d_2b", 32, 64, 3, 3), _basic("conv2d_3b", 64, 80, 1, 1),
           _basic("conv2d_4a", 80, 192, 3, 3), _basic("conv2d_4b", 192, 256, 3, 3)]
    for i in range(5):
        out += _block35("repeat_1.%d" % i)
    out += [_basic("mixed_6a.branch0", 256, 384, 3, 3),
            _basic("mixed_6a.branch1.0", 256, 192, 1, 1),
            _basic("mixed_6a.branch1.1", 192, 192, 3, 3),
            _basic("mixed_6a.branch1.2", 192, 256, 3, 3)]
    for i in range(10):
        out += _block17("repeat_2.%d" % i)
    out += [_basic("mixed_7a.branch0.0", 896, 256, 1, 1),
            _basic("mixed_7a.branch0.1", 256, 384, 3, 3),
            _basic("mixed_7a.branch1.0", 896, 256, 1, 1),
            _basic("mixed_7a.branch1.1", 256, 256, 3, 3),
            _basic("mixed_7a.branch2.0", 896, 256, 1, 1),
            _basic("mixed_7a.branch2.1", 256, 256, 3, 3),
            _basic("mixed_7a.branch2.2", 256, 256, 3, 3)]
    for i in range(5):
        out += _block8("repeat_3.%d" % i)
    out += _block8("block8")
    out.append(("dense", "last", (512, 1792)))
    return out


def expected_keys():
    """{state-dict key: shape} of every parameter the converter uses."""
    keys = collections.OrderedDict()
    for kind, path, shape in layers():
        if kind == "basic":
            keys[path + ".conv.weight"] = shape
            for k in ("weight", "bias", "running_mean", "running_var"):
                keys["%s.bn.%s" % (path, k)] = (shape[0],)
        elif kind == "up":
            keys[path + ".weight"] = shape
            keys[path + ".bias"] = (shape[0],)
        else:
            keys["last_linear.weight"] = shape
            for k in ("weight", "bias", "running_mean", "running_var"):
                keys["last_bn." + k] = (shape[0],)
    return keys


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

class ConvertError(Exception):
    pass


def _is_tensor_map(obj):
    return isinstance(obj, collections.abc.Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and hasattr(v, "shape") for k, v in obj.items())


def extract_state_dict(obj):
    """The parameter mapping inside what torch.load returned: a bare state dict, a
    dict holding one under a usual key, or a module. "module." prefixes (from
    DataParallel) are removed. Raises ConvertError when none is found."""
    for _ in range(4):
        if hasattr(obj, "state_dict") and callable(obj.state_dict):
            obj = obj.state_dict()
        if _is_tensor_map(obj):
            break
        if isinstance(obj, collections.abc.Mapping):
            inner = [obj[k] for k in ("state_dict", "model_state_dict", "model", "net")
                     if k in obj]
            if inner:
                obj = inner[0]
                continue
        raise ConvertError("no state dict found (got %s)" % type(obj).__name__)
    if not _is_tensor_map(obj):
        raise ConvertError("no state dict found (nested too deeply)")
    if all(k.startswith("module.") for k in obj):
        obj = collections.OrderedDict((k[len("module."):], v) for k, v in obj.items())
    return obj


def load_checkpoint(path):
    """torch.load(path) on the CPU, then extract_state_dict; values become numpy
    arrays of their own dtype."""
    try:
        import torch  # only here: `template` needs no torch
    except ImportError:
        raise ConvertError("reading %s needs PyTorch (Debian: apt install python3-torch)"
                           % path) from None
    try:
        obj = torch.load(path, map_location="cpu")
    except Exception as e:  # torch raises many types for a bad file
        raise ConvertError("%s: cannot load: %s" % (path, e)) from None
    sd = extract_state_dict(obj)
    return collections.OrderedDict(
        (k, v.detach().cpu().numpy()) for k, v in sd.items())


# ---------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------

def _fold(w, bn, eps=BN_EPS):
    """Folds batch norm (gamma, beta, mean, var) into weights w [O, ...] (no bias)."""
    gamma, beta, mean, var = (np.asarray(a, dtype=np.float64) for a in bn)
    if np.any(var + eps <= 0) or not np.all(np.isfinite(var)):
        raise ConvertError("batch norm running_var is negative or not finite")
    k = gamma / np.sqrt(var + eps)
    wf = np.asarray(w, dtype=np.float64) * k.reshape((-1,) + (1,) * (w.ndim - 1))
    return wf.astype(np.float32), (beta - mean * k).astype(np.float32)


def convert_state(sd):
    """Checks sd against the architecture and returns [(name, float32 array)] in
    execution order, batch norms folded. Raises ConvertError naming the key."""
    want = expected_keys()
    for key, shape in want.items():
        if key not in sd:
            raise ConvertError("missing key %s (not a facenet-pytorch "
                               "InceptionResnetV1 state dict?)" % key)
        if tuple(sd[key].shape) != shape:
            raise ConvertError("%s: shape %s, expected %s"
                               % (key, list(sd[key].shape), list(shape)))
        if not np.all(np.isfinite(sd[key])):
            raise ConvertError("%s: holds values that are not finite" % key)
    extra = [k for k in sd if k not in want and not k.startswith("logits.")
             and not k.endswith(".num_batches_tracked")]
    if extra:
        raise ConvertError("unexpected keys %s%s" % (", ".join(extra[:5]),
                                                     ", ..." if len(extra) > 5 else ""))
    out = []
    for kind, path, _ in layers():
        if kind == "basic":
            bn = [sd["%s.bn.%s" % (path, k)]
                  for k in ("weight", "bias", "running_mean", "running_var")]
            w, b = _fold(sd[path + ".conv.weight"], bn)
            out += [(path + ".conv.weight", w), (path + ".conv.bias", b)]
        elif kind == "up":
            out += [(path + ".weight", sd[path + ".weight"].astype(np.float32)),
                    (path + ".bias", sd[path + ".bias"].astype(np.float32))]
        else:
            bn = [sd["last_bn." + k] for k in ("weight", "bias", "running_mean",
                                                "running_var")]
            w, b = _fold(sd["last_linear.weight"], bn)
            out += [("last_linear.weight", w), ("last_linear.bias", b)]
    return out


def file_integrity(path):
    """Subresource-integrity string ("sha512-" + base64) of a file."""
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha512-" + base64.b64encode(h.digest()).decode("ascii")


def metadata(source, integrity, name, margin=DEFAULT_MARGIN):
    meta = collections.OrderedDict()
    meta["general.architecture"] = ARCH
    meta["general.name"] = name
    meta["general.source"] = source
    meta["general.source_integrity"] = integrity
    meta["general.converter"] = CONVERTER
    meta["input.size"] = [INPUT_SIZE, INPUT_SIZE]
    meta["input.mean"] = [127.5] * 3
    meta["input.scale"] = [1.0 / 128.0] * 3
    meta["align.template"] = template(margin)
    meta[ARCH + ".template_margin"] = int(margin)
    for key, value in SCALES:
        meta["%s.scale.%s" % (ARCH, key)] = float(value)
    meta[ARCH + ".bn_eps"] = BN_EPS
    return meta


def convert(src, dst, margin=DEFAULT_MARGIN, source=None, name=None):
    """Converts checkpoint file src into model file dst (written atomically)."""
    sd = load_checkpoint(src)
    tensors = convert_state(sd)
    base = os.path.basename(src)
    meta = metadata(source or "file:" + base, file_integrity(src),
                    name or "FaceNet Inception-ResNet-v1 (%s)" % os.path.splitext(base)[0],
                    margin)
    write_model(dst, meta, tensors)
    return meta, tensors


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("convert", help="convert a checkpoint")
    p.add_argument("input", help="facenet-pytorch state dict (.pt / .pth)")
    p.add_argument("-o", "--output", required=True, help="model file to write (.fmm)")
    p.add_argument("--margin", type=int, default=DEFAULT_MARGIN,
                   help="MTCNN crop margin in output pixels the template mimics")
    p.add_argument("--source", help="general.source (default file:BASENAME)")
    p.add_argument("--name", help="general.name")
    p = sub.add_parser("template", help="print align.template")
    p.add_argument("--margin", type=int, default=DEFAULT_MARGIN)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "template":
            t = template(args.margin)
            print(" ".join("(%.4f, %.4f)" % (t[i], t[i + 1]) for i in range(0, 10, 2)))
            return 0
        meta, tensors = convert(args.input, args.output, args.margin, args.source,
                                args.name)
    except (ConvertError, ValueError, OSError) as e:
        print("facenet2fmm: %s" % e, file=sys.stderr)
        return 1
    n = sum(a.size for _, a in tensors)
    print("facenet2fmm: %s: %d tensors, %d parameters, template %s"
          % (args.output, len(tensors), n, meta["align.template"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
