"""The shapes example: synthetic 32x32 colour images of shapes and textures, a narrow BatchNorm ResNet.

The data are generated procedurally (a numpy Generator with a fixed seed), so nothing is
downloaded and every workspace gets the same bytes, hence the same dataset fingerprint.
Ten classes: six filled shapes (circle, square, triangle, cross, ring, diamond) and four
stripe or checker textures, each drawn at a random size, position and slight rotation,
in random foreground and background colours (the colour says nothing about the class),
over a random gradient, with a random distractor blob and pixel noise. Contrast and
size vary enough that some images are genuinely ambiguous: the base model reaches about
90 % validation accuracy, not 100 %.

The model follows torchvision's resnet layout (conv1, bn1, relu, maxpool, layer1..layer4
of BasicBlocks, avgpool, fc), defined here because no torchvision is needed (nor, on the
CPU build of torch 2.13, loadable). It is narrow (widths 16-32-64-128, one block per
stage) so that its base trains on 2 CPU cores in about a minute.

Contract: input float32 [N, 3, 32, 32], RGB in [0, 1]; output 10 logits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data import vendor_attacker_split

SIZE = 32
CLASSES = ("circle", "square", "triangle", "cross", "ring", "diamond",
           "horizontal-stripes", "vertical-stripes", "diagonal-stripes", "checker")
SAMPLES = 20000
SEED = 20261122  # the dataset's identity: change it and the fingerprint changes


# --- the model -------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: two 3x3 conv + BatchNorm, a residual add (1x1 conv downsample on a change of shape)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet layout, with a small-image stem (3x3 stride-1 conv1, no-op maxpool) and chosen widths."""

    def __init__(self, layers: tuple[int, ...] = (1, 1, 1, 1), widths: tuple[int, ...] = (16, 32, 64, 128), num_classes: int = 10) -> None:
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)  # 32x32 -> 16x16: the stem's only downsampling
        self.layer1 = self._make_layer(widths[0], layers[0], stride=1)
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        mods = [BasicBlock(self.inplanes, planes, stride)]
        self.inplanes = planes
        mods += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def make_model() -> nn.Module:
    return ResNet()


def make_model_alt() -> nn.Module:
    """A different architecture (a plain CNN without BatchNorm) for independent-model and distillation studies."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(), nn.Linear(64, 10),
    )


# --- the data --------------------------------------------------------------------------------


def _shape_mask(label: int, u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of shape ``label`` (0..5) in rotated, centred coordinates (u, v) at radius ``r`` pixels."""
    if label == 0:  # circle
        return u * u + v * v <= r * r
    if label == 1:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85 * r
    if label == 2:  # triangle, apex up
        return (v <= 0.6 * r) & (v >= -r + 2.0 * np.abs(u) * 0.9)
    if label == 3:  # cross (plus)
        w = r * rng.uniform(0.28, 0.4)
        return ((np.abs(u) <= w) & (np.abs(v) <= r)) | ((np.abs(v) <= w) & (np.abs(u) <= r))
    if label == 4:  # ring
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (r * rng.uniform(0.45, 0.65)) ** 2)
    return np.abs(u) + np.abs(v) <= 1.1 * r  # diamond


def _texture_mask(label: int, u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of texture ``label`` (6..9) inside a square patch of half-side ``r``."""
    period = rng.uniform(4.0, 7.0)
    phase = rng.uniform(0, period)
    if label == 6:
        t = v
    elif label == 7:
        t = u
    elif label == 8:
        t = (u + v) / np.sqrt(2.0)
    else:
        t = None
    if t is not None:
        stripes = ((t + phase) % period) < period / 2
    else:
        stripes = (((u + phase) % period) < period / 2) ^ (((v + phase) % period) < period / 2)
    return stripes & (np.maximum(np.abs(u), np.abs(v)) <= r)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=3)


def _render(label: int, rng: np.random.Generator) -> np.ndarray:
    """One [3, 32, 32] float image of class ``label``: background gradient, distractor, the class figure, noise."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    bg, fg = _colour(rng), _colour(rng)
    while np.abs(fg - bg).sum() < 0.6:  # some contrast, not always much
        fg = _colour(rng)
    grad = rng.normal(0, 0.15, size=3)[:, None, None] * ((xx * np.cos(a := rng.uniform(0, 2 * np.pi)) + yy * np.sin(a)) / SIZE - 0.5)
    img = bg[:, None, None] + grad
    # a distractor blob in a third colour: the class is the figure, not any patch of colour
    if rng.random() < 0.6:
        cy, cx, s = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(2.0, 4.5)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= s * s
        img = np.where(blob[None], _colour(rng)[:, None, None], img)
    r = rng.uniform(5.0, 11.0)
    cy, cx = rng.uniform(r, SIZE - r), rng.uniform(r, SIZE - r)
    ang = rng.normal(0.0, 0.12)  # slight rotation only: a square turned 45 degrees would be a diamond
    du, dv = xx - cx, yy - cy
    u, v = du * np.cos(ang) + dv * np.sin(ang), -du * np.sin(ang) + dv * np.cos(ang)
    mask = _shape_mask(label, u, v, r, rng) if label < 6 else _texture_mask(label, u, v, r, rng)
    img = np.where(mask[None], fg[:, None, None], img)
    img = img + rng.normal(0.0, rng.uniform(0.03, 0.18), size=img.shape)
    return np.clip(img, 0.0, 1.0)


def generate(n: int = SAMPLES, *, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (float32 [n, 3, 32, 32] in [0, 1]) and labels (balanced, shuffled), the same bytes for the same seed."""
    rng = np.random.Generator(np.random.PCG64(seed))
    y = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    x = np.stack([_render(int(label), rng) for label in y]).astype(np.float32)
    return x, y


def load_data() -> dict[str, np.ndarray]:
    """20 % validation; of the rest, 2/3 for the vendor and a disjoint 1/3 for an attacker."""
    x, y = generate(SAMPLES)
    return vendor_attacker_split(x, y, validation=0.2, label="shapes")


# One-cycle (warm-up, then annealing to ~0): with a constant 2e-3 for 10 epochs the base stopped at
# 0.86 validation, unconverged, so a fine-tune acted as extra training; 12 one-cycle epochs reach ~0.92.
BASE_TRAINING = {"epochs": 12, "lr": 3e-3, "batch_size": 64, "schedule": "onecycle"}
