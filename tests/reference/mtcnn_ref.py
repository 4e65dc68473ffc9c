#!/usr/bin/python3
"""mtcnn_ref: an independent MTCNN face detector in numpy, the specification that
facemill's C detector (worker/) follows and is tested against.

It reads the converted model files (models/cache/mtcnn_{pnet,rnet,onet}.fmm, made by
models/fetch) with models/tools/fmmodel.py and an image as a binary PPM (P6, maxval
255), so this program and the C code see exactly the same decoded pixels.

    mtcnn_ref.py IMAGE.ppm [--models DIR] [--min-face 20] [--factor 0.709]
                 [--thresholds 0.6,0.7,0.7] [--max-side 0] [--stages]
                 [--draw OUT.ppm]

prints one JSON object: {"image", "width", "height", "params", "scales", "faces":
[{"box": [x1, y1, x2, y2], "score": s, "landmarks": [[x, y] x 5]}, ...]}, faces sorted
by score, highest first. --stages adds "stages": {"rnet_in": [...], "onet_in":
[...]}, the boxes entering R-Net and O-Net as [x1, y1, x2, y2, score of the stage
before], in order. --draw writes the image with boxes and landmarks drawn in.

CONVENTIONS (every one of them is part of the specification)

Coordinates. Pixel coordinates with (0, 0) at the CENTRE of the top-left pixel (as in
include/facemill/align.h): pixel (row i, column j) is centred at (x = j, y = i) and
covers [j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]; the whole image is [-0.5, W - 0.5] x
[-0.5, H - 0.5]. A box [x1, y1, x2, y2] is the continuous rectangle between its
corners: width w = x2 - x1, height h = y2 - y1 (no +1). Boxes are NOT rounded to
integers at any stage and the final boxes are NOT clipped to the image. Geometry
(scales, box coordinates, sample positions) is computed in double precision.

Networks (weights in the .fmm files, layouts in models/MTCNN.md). Tensors are NCHW
float32, H = image rows (y), W = image columns (x), channels R, G, B in that order.
  conv: stride 1, no padding ("valid"), weights OIHW, plus bias.
  prelu: y = max(x, 0) + alpha[c] * min(x, 0), per channel.
  maxpool k/s: Caffe "ceil" mode: out = ceil((n - k) / s) + 1; window o covers
    [o*s, min(o*s + k, n)), i.e. no padding before, windows at the end clipped to the
    map. (These are the TFLite graph's SAME/VALID pools: for every size that occurs,
    SAME pads nothing before; both give the same numbers.)
  dense: input flattened in C order of (C, H, W), i.e. index (c*H + y)*W + x;
    weights [out, in], plus bias.
  score = softmax(logits)[1] = 1 / (1 + exp(l0 - l1)), the probability of "face"
    (logit 0 = background), a float32; thresholds compare it as a double:
    (double)score > t.
  P-Net: conv1 3x3 3->10, prelu1, pool 2/2, conv2 3x3 10->16, prelu2, conv3 3x3
    16->32, prelu3, then conv4_1 1x1 32->2 (score logits) and conv4_2 1x1 32->4 (box
    regression). Output map size ceil((h - 2) / 2) - 4 by ceil((w - 2) / 2) - 4; map
    cell (i, j) sees input pixels rows 2i..2i+11, columns 2j..2j+11.
  R-Net (24x24 in): conv1 3x3 3->28, prelu1, pool 3/2, conv2 3x3 28->48, prelu2,
    pool 3/2, conv3 2x2 48->64, prelu3, dense conv4 576->128, prelu4, dense conv5_1
    128->2 (score logits), dense conv5_2 128->4 (box regression).
  O-Net (48x48 in): conv1 3x3 3->32, prelu1, pool 3/2, conv2 3x3 32->64, prelu2,
    pool 3/2, conv3 3x3 64->64, prelu3, pool 2/2, conv4 2x2 64->128, prelu4, dense
    conv5 1152->256, prelu5, dense conv6_1 256->2 (score logits), conv6_2 256->4
    (box regression), conv6_3 256->10 (landmarks).
  Box regression is (dx1, dy1, dx2, dy2) in image axes; landmarks are
  (px1..px5, py1..py5): x of the five points first, then y; points in the order
  left eye, right eye, nose, left mouth corner, right mouth corner (image left/right).

Input values. A sampled pixel value v (float, 0..255, not rounded) becomes
(v - 127.5) * 0.0078125, in float32 (input.mean / input.scale of the model files).

Bilinear sampling. A sample at (sx, sy) with x0 = floor(sx), fx = sx - x0 (likewise
y) is, in float32 with fx, fy converted to float32:
    v = (1 - fy) * ((1 - fx) * p(x0, y0)     + fx * p(x0 + 1, y0))
      +      fy  * ((1 - fx) * p(x0, y0 + 1) + fx * p(x0 + 1, y0 + 1))
  where p(x, y) is the pixel in column x, row y (one channel at a time).
  Pyramid levels (edge clamp): sx is first clamped to [0, W - 1], then x0 = floor(sx),
    x0 + 1 is clamped to W - 1 (same in y). Output pixel (ox, oy) of a level with scale
    s samples sx = (ox + 0.5) / s - 0.5, sy = (oy + 0.5) / s - 0.5 (pixel-centre
    mapping with step exactly 1 / s, like cv2.INTER_LINEAR / align_corners=False but
    with the nominal scale, not W / ws). No antialiasing.
  Face crops (zero outside): a box [x1, y1, x2, y2] resized to S x S (S = 24 or 48)
    samples sx = x1 + (ox + 0.5) * (x2 - x1) / S, sy = y1 + (oy + 0.5) * (y2 - y1) / S;
    no clamping: a neighbour pixel outside the image has value 0 (black) in all
    channels. (Crops of boxes that reach past the border are zero padded, as in the
    original MTCNN.)

Pyramid. s0 = 12 / min_face; with max_side > 0, s0 = min(s0, max_side / max(W, H))
(the largest level is at most max_side pixels on its long side). Levels s_k: s_0 =
s0, s_(k+1) = s_k * factor (repeated double multiplication, no pow), for as long as
min(W, H) * s_k >= 12. Level size hs = ceil(H * s_k), ws = ceil(W * s_k).
With a smallest face searched min_search > 0 (facemill's max(min_face, min_face_frac
x the long side)), level k is left out while level k + 1's window 12 / s_(k+1) is
<= min_search * (1 + 1e-9): the first level run is the last whose window is at most
min_search; the others are unchanged.

NMS(boxes, threshold, mode). Stable sort by score, highest first (equal scores keep
their input order); walk that list and keep a box unless its overlap with an
already kept box is > threshold. inter = max(0, min(x2) - max(x1)) * max(0, min(y2)
- max(y1)), area = w * h; overlap = inter / (area_a + area_b - inter) for "union",
inter / min(area_a, area_b) for "min"; a zero denominator gives overlap 0. The kept
boxes come out in that sorted order.

Regression: w = x2 - x1, h = y2 - y1; x1 += dx1*w, y1 += dy1*h, x2 += dx2*w,
y2 += dy2*h. Square: l = max(w, h), centre kept: [cx - l/2, cy - l/2, cx + l/2,
cy + l/2]. A box whose square side is not > 0 (or not finite) is dropped.

Stage 1 (P-Net), for each level in order: run P-Net on the whole level; every map
cell (i, j) in row-major order with score > t1 gives a candidate box
[2j/s - 0.5, 2i/s - 0.5, (2j + 12)/s - 0.5, (2i + 12)/s - 0.5] (the 12x12 cell mapped
back to the image) with that cell's regression; NMS 0.5 union within the level.
Then all levels' survivors, concatenated level by level, go through NMS 0.7 union;
each survivor is regressed with its P-Net regression and squared.
Stage 2 (R-Net), on the stage-1 boxes in their order: 24x24 crop, keep score > t2,
NMS 0.7 union (boxes as cropped, R-Net scores), regress with R-Net, square.
Stage 3 (O-Net): 48x48 crop, keep score > t3; landmarks from the CROPPED box:
x_k = x1 + w * px_k, y_k = y1 + h * py_k; regress with O-Net (not squared); NMS 0.7
"min" on the regressed boxes. Output sorted by O-Net score, highest first.

Defaults: min_face 20, factor 0.709, thresholds 0.6, 0.7, 0.7, max_side 0 (no limit),
min_search 0 (every level).
"""

import argparse
import json
import math
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "models", "tools"))
from fmmodel import read_model  # noqa: E402

MEAN = np.float32(127.5)
SCALE = np.float32(0.0078125)
BATCH = 128  # crops per R-Net / O-Net forward (memory only; no effect on results)


# ---------------------------------------------------------------------------
# Image input
# ---------------------------------------------------------------------------


def read_ppm(path):
    """Reads a binary PPM (P6, maxval 255); returns uint8 [H, W, 3]."""
    with open(path, "rb") as f:
        data = f.read()
    fields, pos = [], 0
    while len(fields) < 4:
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            while pos < len(data) and data[pos:pos + 1] not in (b"\n", b"\r"):
                pos += 1
            continue
        start = pos
        while pos < len(data) and not data[pos:pos + 1].isspace() and data[pos:pos + 1] != b"#":
            pos += 1
        if start == pos:
            raise ValueError("%s: truncated PPM header" % path)
        fields.append(data[start:pos])
    if fields[0] != b"P6":
        raise ValueError("%s: not a binary PPM (P6)" % path)
    w, h, maxval = (int(x) for x in fields[1:])
    if maxval != 255 or w < 1 or h < 1:
        raise ValueError("%s: need maxval 255 and a non-empty image" % path)
    pos += 1  # the single whitespace byte after maxval
    n = w * h * 3
    if len(data) - pos < n:
        raise ValueError("%s: %d pixel bytes, need %d" % (path, len(data) - pos, n))
    return np.frombuffer(data, np.uint8, n, pos).reshape(h, w, 3)


def write_ppm(path, img):
    h, w, _ = img.shape
    with open(path, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % (w, h))
        f.write(np.ascontiguousarray(img, np.uint8).tobytes())


# ---------------------------------------------------------------------------
# Layers (NCHW float32)
# ---------------------------------------------------------------------------


def conv(x, w, b):
    """Valid convolution, stride 1. x [N, C, H, W], w [O, C, kh, kw], b [O]."""
    o, c, kh, kw = w.shape
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    y = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))  # [N, H', W', O]
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2)) + b[None, :, None, None]


def prelu(x, alpha):
    a = alpha.reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.maximum(x, 0) + a * np.minimum(x, 0)


def maxpool(x, k, s):
    """Max pooling, Caffe ceil mode: out = ceil((n - k) / s) + 1, windows clipped."""
    n, c, h, w = x.shape
    oh = -(-(h - k) // s) + 1
    ow = -(-(w - k) // s) + 1
    ph, pw = (oh - 1) * s + k, (ow - 1) * s + k
    xp = np.full((n, c, ph, pw), -np.inf, np.float32)
    xp[:, :, :h, :w] = x
    y = None
    for i in range(k):
        for j in range(k):
            v = xp[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s]
            y = v.copy() if y is None else np.maximum(y, v)
    return y


def dense(x, w, b):
    return x.reshape(x.shape[0], -1) @ w.T + b


def face_prob(logits, axis):
    """softmax(logits)[1] along axis (2 classes)."""
    l0 = np.take(logits, 0, axis=axis).astype(np.float64)
    l1 = np.take(logits, 1, axis=axis).astype(np.float64)
    return (1.0 / (1.0 + np.exp(l0 - l1))).astype(np.float32)


def load_net(path, arch):
    meta, t = read_model(path)
    if meta.get("general.architecture") != arch:
        raise ValueError("%s: architecture %r, expected %r"
                         % (path, meta.get("general.architecture"), arch))
    if meta.get("input.mean") != [127.5] * 3 or meta.get("input.scale") != [0.0078125] * 3:
        raise ValueError("%s: unexpected input normalisation" % path)
    return t


def pnet_forward(t, x):
    """x [1, 3, H, W] -> prob [H', W'], reg [4, H', W']."""
    x = prelu(conv(x, t["conv1.weight"], t["conv1.bias"]), t["prelu1.alpha"])
    x = maxpool(x, 2, 2)
    x = prelu(conv(x, t["conv2.weight"], t["conv2.bias"]), t["prelu2.alpha"])
    x = prelu(conv(x, t["conv3.weight"], t["conv3.bias"]), t["prelu3.alpha"])
    logits = conv(x, t["conv4_1.weight"], t["conv4_1.bias"])
    reg = conv(x, t["conv4_2.weight"], t["conv4_2.bias"])
    return face_prob(logits[0], 0), reg[0]


def rnet_forward(t, x):
    """x [N, 3, 24, 24] -> prob [N], reg [N, 4]."""
    x = prelu(conv(x, t["conv1.weight"], t["conv1.bias"]), t["prelu1.alpha"])
    x = maxpool(x, 3, 2)
    x = prelu(conv(x, t["conv2.weight"], t["conv2.bias"]), t["prelu2.alpha"])
    x = maxpool(x, 3, 2)
    x = prelu(conv(x, t["conv3.weight"], t["conv3.bias"]), t["prelu3.alpha"])
    x = prelu(dense(x, t["conv4.weight"], t["conv4.bias"]), t["prelu4.alpha"])
    logits = dense(x, t["conv5_1.weight"], t["conv5_1.bias"])
    reg = dense(x, t["conv5_2.weight"], t["conv5_2.bias"])
    return face_prob(logits, 1), reg


def onet_forward(t, x):
    """x [N, 3, 48, 48] -> prob [N], reg [N, 4], landmarks [N, 10]."""
    x = prelu(conv(x, t["conv1.weight"], t["conv1.bias"]), t["prelu1.alpha"])
    x = maxpool(x, 3, 2)
    x = prelu(conv(x, t["conv2.weight"], t["conv2.bias"]), t["prelu2.alpha"])
    x = maxpool(x, 3, 2)
    x = prelu(conv(x, t["conv3.weight"], t["conv3.bias"]), t["prelu3.alpha"])
    x = maxpool(x, 2, 2)
    x = prelu(conv(x, t["conv4.weight"], t["conv4.bias"]), t["prelu4.alpha"])
    x = prelu(dense(x, t["conv5.weight"], t["conv5.bias"]), t["prelu5.alpha"])
    logits = dense(x, t["conv6_1.weight"], t["conv6_1.bias"])
    reg = dense(x, t["conv6_2.weight"], t["conv6_2.bias"])
    pts = dense(x, t["conv6_3.weight"], t["conv6_3.bias"])
    return face_prob(logits, 1), reg, pts


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------


def _lerp(img, y0, y1, x0, x1, fy, fx):
    """Bilinear blend in float32 (formula order of the spec). img float32 [H, W, 3]
    (or with a zero border, see crop); y*, x* index arrays; fy [oh], fx [ow]."""
    fx = fx[None, :, None]
    fy = fy[:, None, None]
    one = np.float32(1)
    top = (one - fx) * img[y0[:, None], x0[None, :]] + fx * img[y0[:, None], x1[None, :]]
    bot = (one - fx) * img[y1[:, None], x0[None, :]] + fx * img[y1[:, None], x1[None, :]]
    return (one - fy) * top + fy * bot


def _normalise(v):
    """float32 [.., H, W, 3] pixel values -> float32 [.., 3, H, W] network input."""
    x = (v - MEAN) * SCALE
    return np.ascontiguousarray(np.moveaxis(x, -1, -3), np.float32)


def _clamped_axis(n_out, scale, n_in):
    s = (np.arange(n_out, dtype=np.float64) + 0.5) / scale - 0.5
    s = np.clip(s, 0.0, n_in - 1)
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (s - i0).astype(np.float32)


def pyramid_level(imgf, scale):
    """The level of scale s: float32 [3, hs, ws] network input."""
    h, w, _ = imgf.shape
    hs, ws = int(math.ceil(h * scale)), int(math.ceil(w * scale))
    y0, y1, fy = _clamped_axis(hs, scale, h)
    x0, x1, fx = _clamped_axis(ws, scale, w)
    return _normalise(_lerp(imgf, y0, y1, x0, x1, fy, fx))


def crop(imgf_padded, box, size):
    """A box resized to size x size with zero outside the image. imgf_padded is the
    float32 image with a 1-pixel zero border on every side (so indices -1 and W map
    to zeros); coordinates further out are clamped to that border, which is zero too."""
    hp, wp, _ = imgf_padded.shape
    h, w = hp - 2, wp - 2
    x1, y1, x2, y2 = box

    def axis(a1, a2, n):
        s = a1 + (np.arange(size, dtype=np.float64) + 0.5) * (a2 - a1) / size
        i0 = np.floor(s)
        f = (s - i0).astype(np.float32)
        i0 = i0.astype(np.int64)
        # +1 for the border; anything outside [-1, n] reads a border zero
        j0 = np.clip(i0 + 1, 0, n + 1)
        j1 = np.clip(i0 + 2, 0, n + 1)
        return j0, j1, f

    y0, y1_, fy = axis(y1, y2, h)
    x0, x1_, fx = axis(x1, x2, w)
    return _lerp(imgf_padded, y0, y1_, x0, x1_, fy, fx)


# ---------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------


def nms(boxes, scores, threshold, mode):
    """Indices of kept boxes, in descending score order (stable). Greedy: the best
    remaining box is kept and every remaining box overlapping it by more than
    threshold is dropped (the same as the rule in the module doc)."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    area = (x2 - x1) * (y2 - y1)
    kept = []
    while len(order):
        i = order[0]
        kept.append(i)
        rest = order[1:]
        iw = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])
        ih = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])
        inter = np.maximum(0.0, iw) * np.maximum(0.0, ih)
        if mode == "union":
            den = area[i] + area[rest] - inter
        else:
            den = np.minimum(area[i], area[rest])
        with np.errstate(divide="ignore", invalid="ignore"):
            ov = np.where(den > 0, inter / den, 0.0)
        order = rest[~(ov > threshold)]
    return np.array(kept, np.int64)


def regress(boxes, reg):
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    reg = reg.astype(np.float64)
    return np.stack([boxes[:, 0] + reg[:, 0] * w, boxes[:, 1] + reg[:, 1] * h,
                     boxes[:, 2] + reg[:, 2] * w, boxes[:, 3] + reg[:, 3] * h], axis=1)


def square(boxes):
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    l = np.maximum(w, h)
    cx = boxes[:, 0] + w * 0.5
    cy = boxes[:, 1] + h * 0.5
    out = np.stack([cx - l * 0.5, cy - l * 0.5, cx + l * 0.5, cy + l * 0.5], axis=1)
    keep = np.isfinite(out).all(axis=1) & (l > 0)
    return out, keep


# ---------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------


def pyramid_scales(w, h, min_face, factor, max_side, min_search=0.0):
    s = 12.0 / min_face
    if max_side > 0:
        s = min(s, max_side / max(w, h))
    scales = []
    while min(w, h) * s >= 12:
        scales.append(s)
        s = s * factor
    first = 0
    if min_search > 0:
        while first + 1 < len(scales) and 12.0 / scales[first + 1] <= min_search * (1 + 1e-9):
            first += 1
    return scales[first:]


class Detector:
    def __init__(self, models_dir):
        self.p = load_net(os.path.join(models_dir, "mtcnn_pnet.fmm"), "mtcnn.pnet")
        self.r = load_net(os.path.join(models_dir, "mtcnn_rnet.fmm"), "mtcnn.rnet")
        self.o = load_net(os.path.join(models_dir, "mtcnn_onet.fmm"), "mtcnn.onet")

    def _crops(self, imgp, boxes, size):
        for k in range(0, len(boxes), BATCH):
            yield _normalise(np.stack([crop(imgp, b, size) for b in boxes[k:k + BATCH]]))

    def detect(self, img, min_face=20.0, factor=0.709, thresholds=(0.6, 0.7, 0.7),
               max_side=0.0, stages=None, min_search=0.0):
        h, w, _ = img.shape
        imgf = img.astype(np.float32)
        t1, t2, t3 = thresholds
        scales = pyramid_scales(w, h, min_face, factor, max_side, min_search)
        if stages is not None:
            stages.update(scales=scales, rnet_in=[], onet_in=[])

        # Stage 1: P-Net over the pyramid
        all_boxes, all_scores, all_reg = [], [], []
        for s in scales:
            prob, reg = pnet_forward(self.p, pyramid_level(imgf, s)[None])
            ii, jj = np.nonzero(prob.astype(np.float64) > t1)  # row-major order
            if len(ii) == 0:
                continue
            b = np.stack([2.0 * jj / s - 0.5, 2.0 * ii / s - 0.5,
                          (2.0 * jj + 12) / s - 0.5, (2.0 * ii + 12) / s - 0.5], axis=1)
            sc = prob[ii, jj]
            rg = reg[:, ii, jj].T
            keep = nms(b, sc, 0.5, "union")
            all_boxes.append(b[keep])
            all_scores.append(sc[keep])
            all_reg.append(rg[keep])
        if not all_boxes:
            return []
        boxes = np.concatenate(all_boxes)
        scores = np.concatenate(all_scores)
        reg = np.concatenate(all_reg)
        keep = nms(boxes, scores, 0.7, "union")
        boxes, ok = square(regress(boxes[keep], reg[keep]))
        boxes, scores = boxes[ok], scores[keep][ok]
        if stages is not None:
            stages["rnet_in"] = _box_list(boxes, scores)
        if len(boxes) == 0:
            return []

        imgp = np.zeros((h + 2, w + 2, 3), np.float32)
        imgp[1:-1, 1:-1] = imgf

        # Stage 2: R-Net
        prob, reg = [], []
        for x in self._crops(imgp, boxes, 24):
            p, r = rnet_forward(self.r, x)
            prob.append(p)
            reg.append(r)
        prob, reg = np.concatenate(prob), np.concatenate(reg)
        sel = np.nonzero(prob.astype(np.float64) > t2)[0]
        boxes, scores, reg = boxes[sel], prob[sel], reg[sel]
        keep = nms(boxes, scores, 0.7, "union")
        boxes, ok = square(regress(boxes[keep], reg[keep]))
        boxes, scores = boxes[ok], scores[keep][ok]
        if stages is not None:
            stages["onet_in"] = _box_list(boxes, scores)
        if len(boxes) == 0:
            return []

        # Stage 3: O-Net
        prob, reg, pts = [], [], []
        for x in self._crops(imgp, boxes, 48):
            p, r, q = onet_forward(self.o, x)
            prob.append(p)
            reg.append(r)
            pts.append(q)
        prob, reg, pts = np.concatenate(prob), np.concatenate(reg), np.concatenate(pts)
        sel = np.nonzero(prob.astype(np.float64) > t3)[0]
        boxes, scores, reg, pts = boxes[sel], prob[sel], reg[sel], pts[sel].astype(np.float64)
        bw = (boxes[:, 2] - boxes[:, 0])[:, None]
        bh = (boxes[:, 3] - boxes[:, 1])[:, None]
        lx = boxes[:, 0:1] + bw * pts[:, 0:5]
        ly = boxes[:, 1:2] + bh * pts[:, 5:10]
        boxes = regress(boxes, reg)
        keep = nms(boxes, scores, 0.7, "min")
        faces = []
        for i in keep:
            faces.append({"box": [float(v) for v in boxes[i]], "score": float(scores[i]),
                          "landmarks": [[float(lx[i, k]), float(ly[i, k])] for k in range(5)]})
        return faces


def _box_list(boxes, scores):
    return [[float(v) for v in b] + [float(s)] for b, s in zip(boxes, scores)]


def draw(img, faces):
    """A copy of img with boxes (green) and landmarks (red) drawn in."""
    out = img.copy()
    h, w, _ = out.shape
    t = max(1, int(round(max(h, w) / 500.0)))
    for f in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in f["box"])
        for (a, b, c, d) in ((x1, y1 - t, x2, y1 + t), (x1, y2 - t, x2, y2 + t),
                             (x1 - t, y1, x1 + t, y2), (x2 - t, y1, x2 + t, y2)):
            out[max(0, b):max(0, min(h, d + 1)), max(0, a):max(0, min(w, c + 1))] = (0, 255, 0)
        for (x, y) in f["landmarks"]:
            x, y = int(round(x)), int(round(y))
            out[max(0, y - 2 * t):max(0, y + 2 * t + 1), max(0, x - 2 * t):max(0, x + 2 * t + 1)] = (255, 0, 0)
    return out


def main(argv):
    ap = argparse.ArgumentParser(description="Reference MTCNN detector (numpy).")
    ap.add_argument("image", help="binary PPM (P6, maxval 255)")
    ap.add_argument("--models", default=os.path.join(REPO, "models", "cache"),
                    help="directory with mtcnn_{pnet,rnet,onet}.fmm")
    ap.add_argument("--min-face", type=float, default=20.0)
    ap.add_argument("--factor", type=float, default=0.709)
    ap.add_argument("--thresholds", default="0.6,0.7,0.7")
    ap.add_argument("--max-side", type=float, default=0.0,
                    help="largest pyramid level's long side (0: no limit)")
    ap.add_argument("--min-search", type=float, default=0.0,
                    help="smallest face searched (levels for smaller ones skipped; 0: all)")
    ap.add_argument("--stages", action="store_true", help="include intermediate boxes")
    ap.add_argument("--draw", help="write the image with the detections to this PPM")
    args = ap.parse_args(argv)
    th = tuple(float(v) for v in args.thresholds.split(","))
    if len(th) != 3:
        ap.error("--thresholds takes three comma-separated numbers")
    if args.min_face <= 0 or not 0 < args.factor < 1 or args.max_side < 0:
        ap.error("need min-face > 0, 0 < factor < 1, max-side >= 0")
    try:
        img = read_ppm(args.image)
        det = Detector(args.models)
    except (OSError, ValueError) as e:
        print("mtcnn_ref: %s" % e, file=sys.stderr)
        return 1
    stages = {} if args.stages else None
    faces = det.detect(img, args.min_face, args.factor, th, args.max_side, stages,
                       args.min_search)
    res = {"image": args.image, "width": img.shape[1], "height": img.shape[0],
           "params": {"min_face": args.min_face, "factor": args.factor,
                      "thresholds": list(th), "max_side": args.max_side,
                      "min_search": args.min_search},
           "scales": pyramid_scales(img.shape[1], img.shape[0], args.min_face,
                                    args.factor, args.max_side, args.min_search),
           "faces": faces}
    if stages is not None:
        res["stages"] = {k: v for k, v in stages.items() if k != "scales"}
    if args.draw:
        write_ppm(args.draw, draw(img, faces))
    json.dump(res, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
