#!/usr/bin/env python3
"""Export the front-door test fixtures: small real PyTorch networks through both ONNX exporters.

Why: the TorchScript exporter (``torch.onnx.export(dynamo=False, opset_version=17)``) and the
dynamo exporter (``dynamo=True``, opset 20 in torch 2.14) spell the same network differently --
full-range Slices, Shape->Gather->Concat chains, Flatten vs Reshape, ``Gelu`` as one op (opset 20)
or spelled out with Erf/Tanh, one-input Concats, zero Pads, same-type Casts. nirc's front door and
canonicalisation passes must bring both to one form (tests/test_frontdoor_fixtures.py checks it);
the tests need no torch because the exports are committed under ``tests/fixtures/frontdoor/``.

Each network is small (a few thousand parameters, 32x32 or 8x8 inputs), randomly initialised with
``torch.manual_seed(0)``, and its BatchNorm statistics are re-estimated on random batches (train-mode
forward passes with cumulative averaging), so the BN folds see realistic, non-default statistics.
Both exports of one network carry the same weights. Pairs written (``<name>_ts.onnx``, ``<name>_dy.onnx``):

* ``ghost``: timm GhostNet building blocks (GhostBottleneck with and without SE, stride 2) and a
  ``x.view(x.size(0), -1)`` head -- full-range channel Slices (``x[:, :out_chs]``) and a
  Shape->Gather->Unsqueeze->Concat->Reshape chain in the TorchScript export.
* ``gelu_ln``: exact and tanh GELU (``Gelu``-20 in the dynamo export), LayerNormalization over NHWC
  permutes, ``torch.flatten``.
* ``noise``: a sum started from a literal 0, one-input ``torch.cat``, a zero ``F.pad``, ``expand_as``
  of itself, ``repeat(1, 1, 1, 1)``, ``+ torch.zeros(1)``, a mean ``expand_as`` the map it multiplies,
  a one-chunk ``split``, ``.float()`` of a float tensor, ``* 1.0``, between convolutions.
* ``chunk``: ShuffleNet's ``chunk(2)`` of channels and a q/k/v ``unbind`` -- Slices in one export,
  Split in the other.
* ``norms``: GroupNorm, RMSNorm, SiLU and GELU, dynamo only, at opset 23 (``norms_dy23.onnx``:
  GroupNormalization-21, RMSNormalization-23, Gelu-20); the TorchScript exporter has no ``rms_norm``.

Plus ``noise_opset9_ts.onnx``: the ``noise`` network through the TorchScript exporter at opset 9
(ONNX's converter brings it up to nirc's opset).

Run with an environment that has torch and timm:  ``python examples/build_frontdoor_fixtures.py [OUTDIR]``
(default ``tests/fixtures/frontdoor``).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.ghostnet import GhostBottleneck
from torch import nn

RESOLUTION = 32


class GhostTiny(nn.Module):
    """Stem, two GhostNet bottlenecks (stride 2; SE), pooled classifier through ``view``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block1 = GhostBottleneck(16, 48, 24, stride=2)
        self.block2 = GhostBottleneck(24, 72, 24, se_ratio=0.25)
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.head(x.view(x.size(0), -1))


class GeluLayerNorm(nn.Module):
    """Conv, exact GELU, LayerNorm in NHWC, tanh GELU, flatten, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.LayerNorm(16)
        self.gelu = nn.GELU()
        self.gelu_tanh = nn.GELU(approximate="tanh")
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gelu(self.conv(x))
        y = self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(torch.flatten(self.gelu_tanh(y), 1))


class Noise(nn.Module):
    """Ops that return their input unchanged, as code written for generality produces them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv3 = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | int = 0  # a branch sum started from a literal 0, as timm's MobileOne writes it
        total = total + self.conv1(x)
        y = torch.cat([total], dim=1)
        y = F.pad(y, (0, 0, 0, 0))
        y = y.expand_as(y)
        y = self.conv2(y.repeat(1, 1, 1, 1)) + torch.zeros(1)
        y = y * y.mean(dim=(2, 3), keepdim=True).expand_as(y)
        (y,) = torch.split(y, y.shape[1], dim=1)
        return self.conv3(y.float() * 1.0)


class ChunkUnbind(nn.Module):
    """ShuffleNet's ``chunk(2)`` of channels and an ``unbind`` of a stacked tensor (both exporters
    spell one as Slices and the other as Split, in opposite ways)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1), nn.ReLU())
        self.qkv = nn.Conv2d(16, 48, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv1(x).chunk(2, dim=1)
        y = torch.cat([a, self.branch(b)], dim=1)
        q, k, v = self.qkv(y).reshape(x.shape[0], 3, 16, 8, 8).unbind(1)
        return torch.relu(q) + k * v


class Norms(nn.Module):
    """GroupNorm, RMSNorm (over channels, in NHWC), SiLU and GELU: newer ops in a dynamo export at opset 23."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.group = nn.GroupNorm(4, 16)
        self.rms = nn.RMSNorm(16)
        self.act = nn.SiLU()
        self.gelu = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.group(self.conv(x)))
        return self.gelu(self.rms(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


def reestimate_batchnorm(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Replace BatchNorm's default statistics by the cumulative average over random batches."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, *shape[1:]))
    model.eval()


def export(model: nn.Module, shape: tuple[int, ...], stem: Path, *, dynamo: bool, opset: int | None = None) -> None:
    """TorchScript at ``opset`` (17 by default); dynamo at ``opset`` (its own default when None)."""
    args = (torch.randn(*shape),)
    if dynamo:
        program = torch.onnx.export(model, args, dynamo=True, verbose=False, opset_version=opset)
        assert program is not None
        program.save(str(stem))
    else:
        torch.onnx.export(
            model, args, str(stem), dynamo=False, opset_version=opset or 17, input_names=["input"],
            output_names=["output"],
        )
    print(f"wrote {stem} ({stem.stat().st_size // 1024} KiB)")


def main() -> None:
    warnings.filterwarnings("ignore")
    default = Path(__file__).resolve().parents[1] / "tests/fixtures/frontdoor"
    outdir = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    outdir.mkdir(parents=True, exist_ok=True)
    networks: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {
        "ghost": (GhostTiny, (1, 3, RESOLUTION, RESOLUTION)),
        "gelu_ln": (GeluLayerNorm, (1, 3, 8, 8)),
        "noise": (Noise, (1, 3, 16, 16)),
        "chunk": (ChunkUnbind, (1, 3, 8, 8)),
        "norms": (Norms, (1, 3, 8, 8)),
    }
    for name, (cls, shape) in networks.items():
        torch.manual_seed(0)
        model = cls()
        reestimate_batchnorm(model, shape)
        if name == "norms":  # the TorchScript exporter has no aten::rms_norm: dynamo only
            export(model, shape, outdir / f"{name}_dy23.onnx", dynamo=True, opset=23)
            continue
        torch.manual_seed(1)
        export(model, shape, outdir / f"{name}_ts.onnx", dynamo=False)
        torch.manual_seed(1)
        export(model, shape, outdir / f"{name}_dy.onnx", dynamo=True)
        if name == "noise":
            export(model, shape, outdir / f"{name}_opset9_ts.onnx", dynamo=False, opset=9)


if __name__ == "__main__":
    main()
