#!/usr/bin/env python3
"""Build the block-substitution example models as deterministic, random-weight ONNX files.

Why this exists: ``substitute-blocks`` rewrites blocks that the seed models (``build_models.py``) do not
contain -- the *training form* of a re-parameterisable network (parallel conv branches, each with its
BatchNormalization, summed) and grouped convolutions -- so two small networks that do are built here.
Determinism follows ``build_models.py`` (whose :class:`GraphBuilder` is reused): every initializer is drawn
from its own generator seeded with ``crc32("<model>/<tensor>")``, the IR version and producer are pinned,
so two builds are byte-identical.

Models:

``repvgg_tiny``
    RepVGG-A-style classifier in its training form at 96x96: every block is ``rbr_dense`` (3x3 conv + BN)
    plus ``rbr_1x1`` (1x1 conv + BN) plus, when the block keeps its shape, ``rbr_identity`` (a BN of the
    input), summed and followed by ReLU (module paths as in the reference RepVGG). Stem block 3 -> 32 at
    stride 2, then stages of 2, 3, 3 and 1 blocks with widths 48, 96, 192, 384 (first block of each stage
    at stride 2), global pool, Linear to 10. After re-parameterisation each block is one 3x3 conv.
``resnext_tiny``
    ResNeXt-style classifier at 64x64 with grouped 3x3 convs: stem conv 3x3/2 to 32 channels, then three
    stages of bottlenecks ``1x1 -> grouped 3x3 -> 1x1`` with BN/ReLU, 16 groups, widths 64/128/256 (4, 8 and
    16 channels per group), outputs 128/256/512, projection shortcuts where the shape changes, residual
    Add + ReLU, global pool, Linear to 10.

Usage::

    python examples/build_block_models.py -o out            # both -> out/<name>.onnx
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import onnx

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "models"


def _load_build_models() -> ModuleType:
    """The sibling ``build_models.py`` (``examples/`` is not a package), imported under its own name."""
    if "build_models" in sys.modules:
        return sys.modules["build_models"]
    spec = importlib.util.spec_from_file_location("build_models", Path(__file__).resolve().with_name("build_models.py"))
    if spec is None or spec.loader is None:
        raise ImportError("examples/build_models.py not found next to build_block_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_models"] = module
    spec.loader.exec_module(module)
    return module


_bm = _load_build_models()
if TYPE_CHECKING:
    from build_models import GraphBuilder
else:
    GraphBuilder = _bm.GraphBuilder
RELU_GAIN: float = _bm._RELU_GAIN


# ---------------------------------------------------------------------------------------------------
# RepVGG (training form)
# ---------------------------------------------------------------------------------------------------


def _repvgg_block(b: GraphBuilder, x: str, name: str, cout: int, stride: int) -> str:
    """RepVGGBlock in training mode: BN(conv3x3(x)) + BN(conv1x1(x)) [+ BN(x)], then ReLU.

    Each branch's conv is scaled by ``1 / sqrt(branches)`` so the sum keeps unit variance over the depth.
    """
    cin = b.shapes[x][1]
    identity = cin == cout and stride == 1
    branches = 3 if identity else 2
    gain = RELU_GAIN / math.sqrt(branches)
    dense = b.bn(b.conv(x, f"{name}.rbr_dense.conv", cout, 3, stride, gain=gain), f"{name}.rbr_dense.bn")
    one = b.bn(b.conv(x, f"{name}.rbr_1x1.conv", cout, 1, stride, gain=gain), f"{name}.rbr_1x1.bn")
    y = b.add(dense, one, f"{name}.add_1x1")
    if identity:
        y = b.add(y, b.bn(x, f"{name}.rbr_identity"), f"{name}.add_identity")
    return b.relu(y, f"{name}.nonlinearity")


def repvgg_tiny() -> onnx.ModelProto:
    """RepVGG-A-like, training form, 96x96 input, 10 classes (13 blocks)."""
    b = GraphBuilder("repvgg_tiny", (1, 3, 96, 96))
    x = _repvgg_block(b, b.input_name, "stage0", 32, 2)
    for stage, (width, blocks) in enumerate(((48, 2), (96, 3), (192, 3), (384, 1)), start=1):
        for i in range(blocks):
            x = _repvgg_block(b, x, f"stage{stage}.{i}", width, 2 if i == 0 else 1)
    out = b.classifier_head(x, 10, pool="gap", fc="linear")
    return b.finish(out, "RepVGG-A-style classifier, training form (3x3 + 1x1 + identity branches with BN), 96x96")


# ---------------------------------------------------------------------------------------------------
# ResNeXt (grouped convs)
# ---------------------------------------------------------------------------------------------------

CARDINALITY = 16


def _resnext_block(b: GraphBuilder, x: str, name: str, width: int, cout: int, stride: int, blocks: int) -> str:
    """torchvision ``Bottleneck`` with ``groups``: 1x1 -> grouped 3x3 (stride) -> 1x1, projection if needed."""
    cin = b.shapes[x][1]
    y = b.conv_bn_act(x, (f"{name}.conv1", f"{name}.bn1", f"{name}.relu1"), width, 1)
    y = b.conv_bn_act(y, (f"{name}.conv2", f"{name}.bn2", f"{name}.relu2"), width, 3, stride, groups=CARDINALITY)
    y = b.conv_bn_act(y, (f"{name}.conv3", f"{name}.bn3", None), cout, 1, gain=RELU_GAIN / math.sqrt(2 * blocks))
    shortcut = x
    if stride != 1 or cin != cout:
        shortcut = b.conv_bn_act(x, (f"{name}.downsample.0", f"{name}.downsample.1", None), cout, 1, stride, gain=1.0)
    return b.relu(b.add(shortcut, y, f"{name}.add"), f"{name}.relu")


def resnext_tiny() -> onnx.ModelProto:
    """ResNeXt-like, 64x64 input, cardinality 16, 10 classes."""
    b = GraphBuilder("resnext_tiny", (1, 3, 64, 64))
    x = b.conv_bn_act(b.input_name, ("conv1", "bn1", "relu"), 32, 3, 2, gain=1.0)
    stages = ((64, 128, 1, 2), (128, 256, 2, 2), (256, 512, 2, 1))
    for stage, (width, cout, stride, blocks) in enumerate(stages, start=1):
        for i in range(blocks):
            x = _resnext_block(b, x, f"layer{stage}.{i}", width, cout, stride if i == 0 else 1, blocks)
    out = b.classifier_head(x, 10, pool="avgpool", fc="fc")
    return b.finish(out, f"ResNeXt-style classifier, grouped 3x3 convs (cardinality {CARDINALITY}), 64x64")


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "repvgg_tiny": repvgg_tiny,
    "resnext_tiny": resnext_tiny,
}


def build(name: str) -> onnx.ModelProto:
    """Build model ``name`` (a key of :data:`MODELS`); the result is identical on every call."""
    return _bm.pick(MODELS, name)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    names, out_dir = _bm.parse_model_args(__doc__, MODELS, argv)
    for name in names:
        model = build(name)
        path = out_dir / f"{name}.onnx"
        path.write_bytes(model.SerializeToString())
        macs, params = _bm.count_macs_params(model)  # (int, int)
        print(f"{name:<14} {macs / 1e6:>8.1f} M MACs {params / 1e6:>7.3f} M params -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
