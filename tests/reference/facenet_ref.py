#!/usr/bin/python3
"""facenet_ref: an independent PyTorch definition of FaceNet's Inception-ResNet-v1 as
the facenet-pytorch project defines it, the reference facemill's C builder
(worker/vision/arch_facenet.c) and converter (models/tools/facenet2fmm.py) are checked
against.

Why it exists: the pretrained checkpoint (20180402-114759-vggface2.pt) cannot be
downloaded where facemill is built and tested, so the architecture is verified with
random weights: this module builds a module tree whose state-dict keys and shapes are
exactly the checkpoint's, fills it with seeded random weights whose batch-norm
statistics look like a trained network's, and runs the eval-mode forward.

    facenet_ref.py make-state -o SD.pt [--seed 1] [--logits 8631]
        writes a random state dict (torch.save of an OrderedDict, as the checkpoint)
    facenet_ref.py forward SD.pt FACES.rgb [--size 160] [--npz OUT.npz]
        runs the faces (raw RGB bytes, n x size x size x 3, row-major) and prints one
        JSON object per face: {"face": i, "embedding": [...512], "pooled": [...1792]}
    facenet_ref.py layers [--size 160]
        prints every layer with its output shape and multiply-adds

Architecture (input [n, 3, 160, 160], RGB, value = (pixel - 127.5) / 128):
  BasicConv2d = Conv2d(bias=False) -> BatchNorm2d(eps=0.001) -> ReLU
  conv2d_1a 3->32 3x3/2 | conv2d_2a 32->32 3x3 | conv2d_2b 32->64 3x3 pad 1 |
  maxpool_3a 3x3/2 | conv2d_3b 64->80 1x1 | conv2d_4a 80->192 3x3 |
  conv2d_4b 192->256 3x3/2                                       -> [256, 17, 17]
  repeat_1: 5 x Block35(scale 0.17)                               -> [256, 17, 17]
  mixed_6a: 3x3/2 conv 384 | 1x1 192, 3x3 192, 3x3/2 256 | maxpool 3x3/2
                                                                  -> [896, 8, 8]
  repeat_2: 10 x Block17(scale 0.10)                              -> [896, 8, 8]
  mixed_7a: 1x1 256, 3x3/2 384 | 1x1 256, 3x3/2 256 | 1x1 256, 3x3 256, 3x3/2 256 |
            maxpool 3x3/2                                         -> [1792, 3, 3]
  repeat_3: 5 x Block8(scale 0.20); block8: Block8(scale 1.0, no ReLU)
  avgpool_1a (global mean) -> "pooled" [1792] -> dropout (eval: identity) ->
  last_linear 1792->512 (no bias) -> last_bn (BatchNorm1d, eps 0.001) ->
  F.normalize (p=2, eps=1e-12)                                    -> "embedding" [512]
  Blocks: out = relu(x + scale * conv2d(cat(branches))), conv2d a 1x1 with bias.
  Block35 (256): branch0 1x1 32 | branch1 1x1 32, 3x3 32 | branch2 1x1 32, 3x3 32,
    3x3 32 (3x3 pad 1) | conv2d 96->256.
  Block17 (896): branch0 1x1 128 | branch1 1x1 128, 1x7 128 pad (0,3), 7x1 128 pad
    (3,0) | conv2d 256->896.
  Block8 (1792): branch0 1x1 192 | branch1 1x1 192, 1x3 192 pad (0,1), 3x1 192 pad
    (1,0) | conv2d 384->1792.
The checkpoint also holds logits.weight/bias (the training classifier over the
VGGFace2 identities), unused by the embedding.
"""

import argparse
import collections
import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(1)

BN_EPS = 0.001
SCALE_BLOCK35 = 0.17
SCALE_BLOCK17 = 0.10
SCALE_BLOCK8 = 0.20
EMBED_DIM = 512
POOLED_DIM = 1792
VGGFACE2_CLASSES = 8631


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm, ReLU (keys: conv.*, bn.*)."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride,
                              padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Residual(nn.Module):
    """Common body of Block35/17/8: branches concatenated, 1x1 up-projection with
    bias, scaled residual add, optional ReLU."""

    def __init__(self, scale, relu):
        super().__init__()
        self.scale = scale
        self.use_relu = relu

    def branches(self):
        raise NotImplementedError

    def forward(self, x):
        out = torch.cat([b(x) for b in self.branches()], 1)
        out = x + self.scale * self.conv2d(out)
        return F.relu(out) if self.use_relu else out


class Block35(Residual):
    def __init__(self, scale=1.0):
        super().__init__(scale, True)
        self.branch0 = BasicConv2d(256, 32, 1)
        self.branch1 = nn.Sequential(BasicConv2d(256, 32, 1),
                                     BasicConv2d(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(BasicConv2d(256, 32, 1),
                                     BasicConv2d(32, 32, 3, padding=1),
                                     BasicConv2d(32, 32, 3, padding=1))
        self.conv2d = nn.Conv2d(96, 256, 1)

    def branches(self):
        return (self.branch0, self.branch1, self.branch2)


class Block17(Residual):
    def __init__(self, scale=1.0):
        super().__init__(scale, True)
        self.branch0 = BasicConv2d(896, 128, 1)
        self.branch1 = nn.Sequential(BasicConv2d(896, 128, 1),
                                     BasicConv2d(128, 128, (1, 7), padding=(0, 3)),
                                     BasicConv2d(128, 128, (7, 1), padding=(3, 0)))
        self.conv2d = nn.Conv2d(256, 896, 1)

    def branches(self):
        return (self.branch0, self.branch1)


class Block8(Residual):
    def __init__(self, scale=1.0, no_relu=False):
        super().__init__(scale, not no_relu)
        self.branch0 = BasicConv2d(1792, 192, 1)
        self.branch1 = nn.Sequential(BasicConv2d(1792, 192, 1),
                                     BasicConv2d(192, 192, (1, 3), padding=(0, 1)),
                                     BasicConv2d(192, 192, (3, 1), padding=(1, 0)))
        self.conv2d = nn.Conv2d(384, 1792, 1)

    def branches(self):
        return (self.branch0, self.branch1)


class Mixed6a(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(256, 384, 3, stride=2)
        self.branch1 = nn.Sequential(BasicConv2d(256, 192, 1),
                                     BasicConv2d(192, 192, 3, padding=1),
                                     BasicConv2d(192, 256, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class Mixed7a(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(896, 256, 1),
                                     BasicConv2d(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(BasicConv2d(896, 256, 1),
                                     BasicConv2d(256, 256, 3, stride=2))
        self.branch2 = nn.Sequential(BasicConv2d(896, 256, 1),
                                     BasicConv2d(256, 256, 3, padding=1),
                                     BasicConv2d(256, 256, 3, stride=2))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x),
                          self.branch3(x)), 1)


class InceptionResnetV1(nn.Module):
    """The embedding network; logits only when num_classes is given (checkpoint)."""

    def __init__(self, num_classes=None):
        super().__init__()
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.conv2d_4b = BasicConv2d(192, 256, 3, stride=2)
        self.repeat_1 = nn.Sequential(*[Block35(SCALE_BLOCK35) for _ in range(5)])
        self.mixed_6a = Mixed6a()
        self.repeat_2 = nn.Sequential(*[Block17(SCALE_BLOCK17) for _ in range(10)])
        self.mixed_7a = Mixed7a()
        self.repeat_3 = nn.Sequential(*[Block8(SCALE_BLOCK8) for _ in range(5)])
        self.block8 = Block8(no_relu=True)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.6)
        self.last_linear = nn.Linear(POOLED_DIM, EMBED_DIM, bias=False)
        self.last_bn = nn.BatchNorm1d(EMBED_DIM, eps=BN_EPS)
        self.logits = nn.Linear(EMBED_DIM, num_classes) if num_classes else None

    def features(self, x):
        """Returns (pooled [n, 1792], embedding [n, 512]) as the eval forward."""
        for name in ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b",
                     "conv2d_4a", "conv2d_4b", "repeat_1", "mixed_6a", "repeat_2",
                     "mixed_7a", "repeat_3", "block8"):
            x = getattr(self, name)(x)
        pooled = self.avgpool_1a(x).flatten(1)
        y = self.last_bn(self.last_linear(self.dropout(pooled)))
        return pooled, F.normalize(y, p=2, dim=1)

    def forward(self, x):
        return self.features(x)[1]


def standardize(faces_u8):
    """uint8 [n, h, w, 3] RGB -> float32 [n, 3, h, w], (x - 127.5) / 128 as
    facenet-pytorch's fixed_image_standardization."""
    x = torch.from_numpy(np.ascontiguousarray(faces_u8)).permute(0, 3, 1, 2).float()
    return (x - 127.5) / 128.0


def make_state(seed=1, logits=VGGFACE2_CLASSES, calib=16, size=160):
    """A seeded random state dict with the checkpoint's keys, shapes and dtypes.

    Weights: He-normal convolutions, uniform-range linear layers. Batch-norm
    statistics are those of the network's own activations (a train-mode pass over
    `calib` random faces with cumulative averaging), so every layer sees inputs of a
    trained network's scale; then gamma, beta, mean and var are perturbed per channel
    so none of them is trivial (gamma != 1, beta != 0, var != 1). Returns an
    OrderedDict of CPU float32 tensors (num_batches_tracked as int64, as PyTorch
    saves it)."""
    g = torch.Generator().manual_seed(seed)
    net = InceptionResnetV1(num_classes=logits)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.Conv2d):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(randn(*mod.weight.shape) * (2.0 / fan_in) ** 0.5)
                if mod.bias is not None:
                    mod.bias.copy_(randn(*mod.bias.shape) * 0.05)
            elif isinstance(mod, nn.Linear):
                bound = mod.weight.shape[1] ** -0.5
                mod.weight.copy_((rand(*mod.weight.shape) * 2 - 1) * bound)
                if mod.bias is not None:
                    mod.bias.copy_((rand(*mod.bias.shape) * 2 - 1) * bound)
            elif isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)):
                mod.weight.copy_(0.6 + 0.8 * rand(mod.num_features))
                mod.bias.copy_(0.2 * randn(mod.num_features))
                mod.momentum = None  # cumulative average: one batch = its statistics
                mod.reset_running_stats()

        faces = (rand(calib, size, size, 3) * 255).to(torch.uint8).numpy()
        net.train()
        net.dropout.eval()  # statistics of the eval-mode path
        net.features(standardize(faces))
        net.eval()
        for mod in net.modules():
            if isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)):
                c = mod.num_features
                mod.running_mean.add_(0.1 * randn(c) * mod.running_var.sqrt())
                mod.running_var.mul_(0.7 + 0.6 * rand(c))
                mod.momentum = 0.1
                mod.num_batches_tracked.fill_(100000)
    sd = net.state_dict()
    return collections.OrderedDict((k, v.detach().clone()) for k, v in sd.items())


def load_net(state):
    """An eval-mode network holding state (a state dict or a path to one)."""
    if isinstance(state, (str, os.PathLike)):
        state = torch.load(state, map_location="cpu")
    n_cls = state["logits.weight"].shape[0] if "logits.weight" in state else None
    net = InceptionResnetV1(num_classes=n_cls)
    net.load_state_dict(state, strict=True)
    return net.eval()


def forward(net, faces_u8):
    """faces uint8 [n, h, w, 3] -> (pooled [n, 1792], embedding [n, 512]) numpy
    float32, eval mode, no gradients."""
    with torch.no_grad():
        pooled, emb = net.features(standardize(faces_u8))
    return pooled.numpy(), emb.numpy()


def layers(size=160):
    """(name, output shape, multiply-adds per face) for every convolution, pool and
    dense layer, in execution order."""
    net = InceptionResnetV1().eval()
    rows = []

    def hook(name):
        def fn(mod, inp, out):
            shape = tuple(out.shape[1:])
            macs = 0
            if isinstance(mod, nn.Conv2d):
                macs = out.numel() // out.shape[0] * mod.weight[0].numel()
            elif isinstance(mod, nn.Linear):
                macs = mod.weight.numel()
            rows.append((name, shape, macs))
        return fn

    for name, mod in net.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.MaxPool2d, nn.Linear, nn.AdaptiveAvgPool2d)):
            mod.register_forward_hook(hook(name))
    with torch.no_grad():
        net.features(torch.zeros(1, 3, size, size))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make-state", help="write a seeded random state dict")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--logits", type=int, default=VGGFACE2_CLASSES,
                   help="classifier classes kept in the state dict (0: none)")
    p = sub.add_parser("forward", help="run faces through a state dict")
    p.add_argument("state")
    p.add_argument("faces", help="raw RGB bytes, n x size x size x 3")
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--npz", help="also save pooled and embedding arrays here")
    p = sub.add_parser("layers", help="print the layer list")
    p.add_argument("--size", type=int, default=160)
    args = ap.parse_args(argv)

    if args.cmd == "make-state":
        torch.save(make_state(args.seed, args.logits or None), args.output)
        return 0
    if args.cmd == "layers":
        total = 0
        for name, shape, macs in layers(args.size):
            total += macs
            print("%-34s %-18s %12d" % (name, "x".join(map(str, shape)), macs))
        print("total multiply-adds per face: %d (%.3f GFLOP)" % (total, 2e-9 * total))
        return 0
    raw = np.fromfile(args.faces, dtype=np.uint8)
    per = args.size * args.size * 3
    if raw.size == 0 or raw.size % per:
        print("facenet_ref: %s: %d bytes is not a multiple of %d" % (args.faces, raw.size,
                                                                   per), file=sys.stderr)
        return 2
    faces = raw.reshape(-1, args.size, args.size, 3)
    pooled, emb = forward(load_net(args.state), faces)
    if args.npz:
        np.savez(args.npz, pooled=pooled, embedding=emb)
    for i in range(len(faces)):
        print(json.dumps({"face": i, "embedding": [float(v) for v in emb[i]],
                          "pooled": [float(v) for v in pooled[i]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
