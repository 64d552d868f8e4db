"""Which low-rank form of a kxk conv pays on Ethos-U: Tucker-2 against CP at equal parameters.

Usage::

    .venv/bin/python benchmarks/lowrank_forms.py [--target ethos-u65] [--out benchmarks/results/lowrank_forms.md]

Why: ``nirc compress`` decomposes kxk convs with Tucker-2 (1x1 ``C -> r``, kxk ``r -> r``, 1x1
``r -> N``) and not CP (1x1 ``C -> R``, depthwise kx1, depthwise 1xk, 1x1 ``R -> N``), although CP
removes more parameters and MACs at the same rank. Whether it should is a hardware question: the
NPU runs depthwise convs at a fraction of its MAC rate and every extra layer moves a feature map.
Per layer shape (the VGG19 and ResNet convs the compressor sees), this compiles one-layer models
with Vela: the original conv, Tucker-2 at ranks keeping 1/2 and 1/4 of the parameters, and CP at
the rank with the same parameter count as each Tucker-2; the table gives parameters, MACs and
Vela's latency. Weights are random (latency does not depend on them beyond weight compression,
which both forms share).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nirc.cost import estimate

ROOT = Path(__file__).resolve().parents[1]
ALIGN = 16

# (name, spatial, in channels, out channels, kernel): VGG19-224 stages, VGG19-32's last stage, ResNet stages.
LAYERS = (
    ("vgg224 conv3", 56, 256, 256, 3),
    ("vgg224 conv4", 28, 512, 512, 3),
    ("vgg224 conv5", 14, 512, 512, 3),
    ("vgg32 conv4", 4, 512, 512, 3),
    ("resnet224 layer1", 56, 64, 64, 3),
    ("resnet224 layer3", 14, 256, 256, 3),
)


class Builder:
    """A chain of convs on one input, with random weights (deterministic seed)."""

    def __init__(self, spatial: int, channels: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.tensor, self.channels = "x", channels
        self.spatial = spatial
        self.rng = np.random.default_rng(0)
        self.params = self.macs = 0

    def conv(self, out: int, kernel: tuple[int, int], group: int = 1) -> None:
        name = f"c{len(self.nodes)}"
        fan_in = self.channels // group * kernel[0] * kernel[1]
        w = self.rng.normal(0.0, math.sqrt(2.0 / fan_in), (out, self.channels // group, *kernel)).astype(np.float32)
        b = np.zeros(out, np.float32)
        self.inits += [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]
        pads = [kernel[0] // 2, kernel[1] // 2, kernel[0] // 2, kernel[1] // 2]
        self.nodes.append(
            helper.make_node("Conv", [self.tensor, f"{name}_w", f"{name}_b"], [f"{name}_y"], name=name,
                             kernel_shape=list(kernel), pads=pads, group=group)
        )
        self.params += w.size + out
        self.macs += w.size * self.spatial * self.spatial
        self.tensor, self.channels = f"{name}_y", out

    def model(self, inputs: int) -> onnx.ModelProto:
        shape_in = [1, inputs, self.spatial, self.spatial]
        shape_out = [1, self.channels, self.spatial, self.spatial]
        graph = helper.make_graph(
            self.nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape_in)],
            [helper.make_tensor_value_info(self.tensor, TensorProto.FLOAT, shape_out)], self.inits,
        )  # fmt: skip
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def original(spatial: int, cin: int, cout: int, k: int) -> Builder:
    b = Builder(spatial, cin)
    b.conv(cout, (k, k))
    return b


def tucker(spatial: int, cin: int, cout: int, k: int, r: int) -> Builder:
    b = Builder(spatial, cin)
    b.conv(r, (1, 1))
    b.conv(r, (k, k))
    b.conv(cout, (1, 1))
    return b


def cp(spatial: int, cin: int, cout: int, k: int, r: int) -> Builder:
    b = Builder(spatial, cin)
    b.conv(r, (1, 1))
    b.conv(r, (k, 1), group=r)
    b.conv(r, (1, k), group=r)
    b.conv(cout, (1, 1))
    return b


def tucker_rank(cin: int, cout: int, k: int, keep: float) -> int:
    """The aligned rank r (both modes) whose Tucker-2 keeps about ``keep`` of the weights."""
    budget = keep * cin * cout * k * k
    r = ALIGN
    while (r + ALIGN) * (cin + cout) + (r + ALIGN) ** 2 * k * k <= budget:
        r += ALIGN
    return r


def cp_rank(params: int, cin: int, cout: int, k: int) -> int:
    """The aligned CP rank with at most ``params`` weights."""
    return max(ALIGN, params // (cin + cout + 2 * k) // ALIGN * ALIGN)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--target", default="ethos-u65")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lowrank_forms.md")
    args = parser.parse_args()
    lines = [
        "# Tucker-2 against CP for a kxk conv on Ethos-U (equal parameters)",
        "",
        f"Made by `python benchmarks/lowrank_forms.py --target {args.target}` (one-layer models, Vela's estimate;",
        "Tucker-2 ranks keep about 1/2 and 1/4 of the weights; CP takes the aligned rank with at most",
        "Tucker-2's weights). ratio = CP ms / Tucker-2 ms (> 1: CP is slower).",
        "",
        "| layer | form | rank | params | MACs | Vela ms | vs original | CP / Tucker-2 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, spatial, cin, cout, k in LAYERS:
        base = original(spatial, cin, cout, k)
        base_ms = estimate(base.model(cin), args.target).time_ms
        lines.append(f"| {name} ({spatial}x{spatial}, {cin}->{cout}) | original | | {base.params:,} | {base.macs:,} "
                     f"| {base_ms:.4f} | 1.00 | |")  # fmt: skip
        for keep in (0.5, 0.25):
            r = tucker_rank(cin, cout, k, keep)
            t = tucker(spatial, cin, cout, k, r)
            t_ms = estimate(t.model(cin), args.target).time_ms
            rc = cp_rank(t.params - 2 * r - cout, cin, cout, k)
            c = cp(spatial, cin, cout, k, rc)
            c_ms = estimate(c.model(cin), args.target).time_ms
            lines.append(f"| | Tucker-2 | {r}/{r} | {t.params:,} | {t.macs:,} | {t_ms:.4f} | {base_ms / t_ms:.2f} | |")
            lines.append(f"| | CP | {rc} | {c.params:,} | {c.macs:,} | {c_ms:.4f} | {base_ms / c_ms:.2f} "
                         f"| {c_ms / t_ms:.2f} |")  # fmt: skip
        print(lines[-5:], flush=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
