"""Seeded random-weight ONNX graphs built with ``onnx.helper``: the torch-free builder of nirc's model families.

Why nirc builds its own graphs: the searcher (and the example scripts under
``examples/``, which use this module) needs architectures, not trained weights,
and must run without torch. Everything is byte-for-byte reproducible: every
initializer is drawn from its own generator seeded with
``crc32("<model>/<tensor>")`` (adding a layer does not reshuffle the others),
the ONNX IR version and producer are pinned, and nothing time- or
host-dependent is stored.

Graph conventions are those of a PyTorch eval-mode export at opset 18 (NCHW,
float32, batch 1): ``Conv`` without bias followed by a separate
``BatchNormalization`` (eps 1e-5) and activation, SiLU as ``Mul(x,
Sigmoid(x))``, ``torch.chunk`` as ``Split(num_outputs)``, nearest x2 upsampling
as ``Resize`` with scales, a ``GlobalAveragePool -> Flatten -> Gemm(transB=1)``
classifier head. Initializer names are ``state_dict``-like module paths.

Random weights keep int8 quantization meaningful (activations neither explode
nor vanish): He-normal ``std = gain / sqrt(fan_in)`` divided by
``sqrt(E[gamma^2 / var])`` when a BatchNormalization with random statistics
follows; BN ``gamma, var ~ U(0.5, 1.5)``, ``beta, mean ~ N(0, 0.1)``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
# Pinned (rather than onnx's default for the installed version) so the files do not change when onnx is
# upgraded and so older onnxruntime releases can still load them.  IR 8 is the minimum for opset 18.
IR_VERSION = 8
PRODUCER = "nirc-examples"
BN_EPS = 1e-5

# E[gamma^2] * E[1 / var] for gamma, var ~ U(0.5, 1.5): the expected variance gain of an eval-mode BN whose
# running statistics are random instead of data-derived.  Conv weights are divided by its square root.
_BN_VAR_GAIN = (13.0 / 12.0) * math.log(3.0)
RELU_GAIN = math.sqrt(2.0)
SILU_GAIN = 1.55  # just below the gain where SiLU stacks blow up (1.6 already grows ~4x over the net)

Shape = tuple[int, ...]


class GraphBuilder:
    """Appends nodes and seeded initializers to one graph while tracking NCHW shapes.

    Every layer method takes the input tensor name and returns the output tensor name; the output tensor
    is named after the node so that ``onnx`` error messages and Netron point at the PyTorch module path.
    """

    doc_source = "nirc.search"
    """What the model's doc string points to for how it was made."""

    def __init__(self, model_name: str, input_shape: Shape, input_name: str = "input") -> None:
        self.model_name = model_name
        self.input_name = input_name
        self.input_shape = input_shape
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.shapes: dict[str, Shape] = {input_name: input_shape}
        self._names: set[str] = {input_name}

    # -- initializers -------------------------------------------------------------------------------

    def _rng(self, tensor_name: str) -> np.random.Generator:
        # One generator per tensor, seeded from its qualified name: stable under graph edits elsewhere.
        return np.random.default_rng(zlib.crc32(f"{self.model_name}/{tensor_name}".encode()))

    def _add_init(self, name: str, array: np.ndarray) -> str:
        if name in self._names:
            raise ValueError(f"duplicate tensor name {name!r}")
        self._names.add(name)
        self.shapes[name] = tuple(int(d) for d in np.shape(array))
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def normal(self, name: str, shape: Shape, mean: float, std: float) -> str:
        arr = self._rng(name).standard_normal(shape) * std + mean
        return self._add_init(name, arr)

    def uniform(self, name: str, shape: Shape, low: float, high: float) -> str:
        return self._add_init(name, self._rng(name).uniform(low, high, shape))

    def constant(self, name: str, value: float) -> str:
        """A scalar initializer, shared when requested twice (e.g. the Clip bounds of every ReLU6)."""
        if name not in self._names:
            self._add_init(name, np.array(value, np.float32))
        return name

    # -- nodes --------------------------------------------------------------------------------------

    def _node(
        self, op: str, inputs: Sequence[str], name: str, shape: Shape, output: str | None = None, **attrs: Any
    ) -> str:
        """Append one node; its output tensor is called like the node unless ``output`` is given."""
        output = output or name
        if output in self._names:
            raise ValueError(f"duplicate tensor name {output!r}")
        self._names.add(output)
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=name, **attrs))
        self.shapes[output] = shape
        return output

    def conv(
        self,
        x: str,
        name: str,
        cout: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        gain: float = RELU_GAIN,
        bn_follows: bool = True,
    ) -> str:
        """Bias-free Conv with symmetric ``kernel // 2`` padding (PyTorch ``padding=k//2``)."""
        n, cin, h, w = self.shapes[x]
        if cin % groups or cout % groups:
            raise ValueError(f"{name}: channels {cin}->{cout} not divisible by groups={groups}")
        fan_in = cin // groups * kernel * kernel
        std = gain / math.sqrt(fan_in)
        if bn_follows:
            std /= math.sqrt(_BN_VAR_GAIN)
        weight = self.normal(f"{name}.weight", (cout, cin // groups, kernel, kernel), 0.0, std)
        pad = kernel // 2
        hout = (h + 2 * pad - kernel) // stride + 1
        wout = (w + 2 * pad - kernel) // stride + 1
        return self._node(
            "Conv",
            [x, weight],
            name,
            (n, cout, hout, wout),
            dilations=[1, 1],
            group=groups,
            kernel_shape=[kernel, kernel],
            pads=[pad, pad, pad, pad],
            strides=[stride, stride],
        )

    def bn(self, x: str, name: str) -> str:
        c = self.shapes[x][1]
        inputs = [
            x,
            self.uniform(f"{name}.weight", (c,), 0.5, 1.5),
            self.normal(f"{name}.bias", (c,), 0.0, 0.1),
            self.normal(f"{name}.running_mean", (c,), 0.0, 0.1),
            self.uniform(f"{name}.running_var", (c,), 0.5, 1.5),
        ]
        return self._node("BatchNormalization", inputs, name, self.shapes[x], epsilon=BN_EPS, momentum=0.9)

    def relu(self, x: str, name: str) -> str:
        return self._node("Relu", [x], name, self.shapes[x])

    def relu6(self, x: str, name: str) -> str:
        bounds = [self.constant("relu6.min", 0.0), self.constant("relu6.max", 6.0)]
        return self._node("Clip", [x, *bounds], name, self.shapes[x])

    def add(self, a: str, b: str, name: str) -> str:
        if self.shapes[a] != self.shapes[b]:
            raise ValueError(f"{name}: shape mismatch {self.shapes[a]} vs {self.shapes[b]}")
        return self._node("Add", [a, b], name, self.shapes[a])

    def maxpool(self, x: str, name: str, kernel: int = 2, stride: int = 2) -> str:
        n, c, h, w = self.shapes[x]
        shape = (n, c, (h - kernel) // stride + 1, (w - kernel) // stride + 1)
        return self._node(
            "MaxPool",
            [x],
            name,
            shape,
            kernel_shape=[kernel, kernel],
            pads=[0, 0, 0, 0],
            strides=[stride] * 2,
        )

    def global_avg_pool(self, x: str, name: str) -> str:
        n, c, _, _ = self.shapes[x]
        return self._node("GlobalAveragePool", [x], name, (n, c, 1, 1))

    def flatten(self, x: str, name: str) -> str:
        shape = self.shapes[x]
        return self._node("Flatten", [x], name, (shape[0], math.prod(shape[1:])), axis=1)

    def gemm(
        self, x: str, name: str, out_features: int, gain: float = 1.0, out_name: str | None = None
    ) -> str:
        """PyTorch ``nn.Linear`` as exported: ``Gemm(x, W[out, in], b, transB=1)``, PyTorch bias init."""
        n, in_features = self.shapes[x]
        weight = self.normal(
            f"{name}.weight", (out_features, in_features), 0.0, gain / math.sqrt(in_features)
        )
        bound = 1.0 / math.sqrt(in_features)
        bias = self.uniform(f"{name}.bias", (out_features,), -bound, bound)
        return self._node("Gemm", [x, weight, bias], name, (n, out_features), output=out_name, transB=1)

    # -- composites ---------------------------------------------------------------------------------

    def conv_bn_act(
        self,
        x: str,
        names: tuple[str, str, str | None],
        cout: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        gain: float = RELU_GAIN,
        act: Callable[[str, str], str] | None = None,
    ) -> str:
        """Conv -> BatchNormalization -> optional activation; ``names`` = (conv, bn, activation)."""
        conv_name, bn_name, act_name = names
        y = self.bn(self.conv(x, conv_name, cout, kernel, stride, groups, gain), bn_name)
        if act_name is None:
            return y
        return (act or self.relu)(y, act_name)

    def classifier_head(self, x: str, num_classes: int, pool: str = "avgpool", fc: str = "linear") -> str:
        """GlobalAveragePool -> Flatten -> Gemm producing the graph output ``logits``."""
        y = self.flatten(self.global_avg_pool(x, pool), "flatten")
        return self.gemm(y, fc, num_classes, gain=RELU_GAIN, out_name="logits")


    # -- the ops of YOLO-style and mobile networks --------------------------------------------------

    def silu(self, x: str, name: str) -> str:
        sig = self._node("Sigmoid", [x], f"{name}.sigmoid", self.shapes[x])
        return self._node("Mul", [x, sig], name, self.shapes[x])

    def hardswish(self, x: str, name: str) -> str:
        """``nn.Hardswish`` as PyTorch exports it at opset 14+: one HardSwish op."""
        return self._node("HardSwish", [x], name, self.shapes[x])

    def hardsigmoid(self, x: str, name: str) -> str:
        """``F.hardsigmoid`` as exported: ``HardSigmoid(alpha=1/6, beta=0.5)``."""
        return self._node("HardSigmoid", [x], name, self.shapes[x], alpha=1.0 / 6.0, beta=0.5)

    def conv_bn_silu(self, x: str, name: str, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> str:
        """Ultralytics ``Conv``: Conv(no bias) -> BN -> SiLU, module path ``name.{conv,bn,act}``."""
        y = self.bn(self.conv(x, f"{name}.conv", cout, kernel, stride, groups, gain=SILU_GAIN), f"{name}.bn")
        return self.silu(y, f"{name}.act")

    def conv_bias(self, x: str, name: str, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                  gain: float = 1.0, pad: int | None = None, output: str | None = None) -> str:  # fmt: skip
        """Conv with bias and explicit padding (default ``kernel // 2``), no BN after it."""
        n, cin, h, w = self.shapes[x]
        p = kernel // 2 if pad is None else pad
        weight = self.normal(f"{name}.weight", (cout, cin // groups, kernel, kernel), 0.0,
                             gain / math.sqrt(cin // groups * kernel * kernel))  # fmt: skip
        bias = self.normal(f"{name}.bias", (cout,), 0.0, 0.05)
        shape = (n, cout, (h + 2 * p - kernel) // stride + 1, (w + 2 * p - kernel) // stride + 1)
        return self._node("Conv", [x, weight, bias], name, shape, output=output, group=groups,
                          kernel_shape=[kernel, kernel], pads=[p] * 4, strides=[stride, stride])  # fmt: skip

    def split(self, x: str, name: str, parts: int, axis: int = 1) -> list[str]:
        """``torch.chunk`` along ``axis`` (equal parts), exported as Split with ``num_outputs``."""
        shape = list(self.shapes[x])
        if shape[axis] % parts:
            raise ValueError(f"{name}: {shape[axis]} not divisible into {parts}")
        shape[axis] //= parts
        outs = [f"{name}.{i}" for i in range(parts)]
        for o in outs:
            if o in self._names:
                raise ValueError(f"duplicate tensor name {o!r}")
            self._names.add(o)
            self.shapes[o] = tuple(shape)
        self.nodes.append(helper.make_node("Split", [x], outs, name=name, axis=axis, num_outputs=parts))
        return outs

    def concat(self, xs: Sequence[str], name: str, axis: int = 1) -> str:
        shape = list(self.shapes[xs[0]])
        shape[axis] = sum(self.shapes[x][axis] for x in xs)
        return self._node("Concat", list(xs), name, tuple(shape), axis=axis)

    def maxpool_same(self, x: str, name: str, kernel: int) -> str:
        """Stride-1 max-pool with ``kernel // 2`` padding (SPPF's ``nn.MaxPool2d(k, 1, k // 2)``)."""
        p = kernel // 2
        return self._node("MaxPool", [x], name, self.shapes[x], kernel_shape=[kernel, kernel], pads=[p] * 4,
                          strides=[1, 1])  # fmt: skip

    def upsample2(self, x: str, name: str) -> str:
        """``nn.Upsample(scale_factor=2, mode="nearest")`` as PyTorch exports it."""
        n, c, h, w = self.shapes[x]
        scales = self._add_init(f"{name}.scales", np.array([1, 1, 2, 2], np.float32))
        return self._node("Resize", [x, "", scales], name, (n, c, 2 * h, 2 * w), mode="nearest",
                          coordinate_transformation_mode="asymmetric", nearest_mode="floor")  # fmt: skip

    def binary(self, op: str, a: str, b: str, name: str) -> str:
        shape = tuple(int(d) for d in np.broadcast_shapes(self.shapes[a], self.shapes[b]))
        return self._node(op, [a, b], name, shape)

    def finish(self, output: str | Sequence[str], doc: str) -> onnx.ModelProto:
        """The model with graph output(s) ``output``; ``doc_source`` names the script in its doc string."""
        outputs = [output] if isinstance(output, str) else list(output)
        graph = helper.make_graph(
            self.nodes,
            self.model_name,
            [helper.make_tensor_value_info(self.input_name, TensorProto.FLOAT, list(self.input_shape))],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(self.shapes[o])) for o in outputs],
            initializer=self.initializers,
            doc_string=doc,
        )
        return helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name=PRODUCER,
            producer_version="1",
            doc_string=f"{self.model_name}: random seeded weights, see {self.doc_source}",
        )


def count_macs_params(model: onnx.ModelProto) -> tuple[int, int]:
    """(MACs, learnable params) of a graph, from initializer shapes and ONNX shape inference.

    MACs: Conv ``prod(output shape) * Cin/groups * kh * kw`` and Gemm ``M * K * N``; other ops are free.
    Params: weight and bias of Conv/Gemm plus BatchNormalization scale and bias -- PyTorch's
    ``sum(p.numel() for p in model.parameters())``, which excludes BN running statistics.
    """
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes: dict[str, list[int]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    macs = 0
    learnable: set[str] = set()
    for node in model.graph.node:
        if node.op_type == "Conv":
            macs += math.prod(shapes[node.output[0]]) * math.prod(inits[node.input[1]][1:])
            learnable.update(node.input[1:])
        elif node.op_type == "Gemm":
            macs += shapes[node.output[0]][0] * math.prod(inits[node.input[1]])
            learnable.update(node.input[1:])
        elif node.op_type == "BatchNormalization":
            learnable.update(node.input[1:3])
    params = sum(math.prod(inits[name]) for name in learnable if name in inits)
    return macs, params
