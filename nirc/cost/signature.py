"""Structural signature of a (sub)graph: the cache key of the cost oracle.

Why structural: a search loop generates the same block again and again under
different tensor and node names, and every one of those must hit the cache.
The key therefore covers what determines Vela's estimate and nothing else:

* the ops, their attributes and how they are wired (tensors numbered in order
  of appearance, so names do not matter);
* the graph inputs' shapes and element types; every other shape follows from
  them, the attributes and the weight shapes, so no shape inference is needed
  and a cache hit stays cheap;
* a sha256 of every constant's bytes: Vela compresses weights, and the encoded
  size (hence DRAM traffic and cycles) depends on the values;
* the target's accelerator, system config and memory mode, the Vela version,
  and a fingerprint of nirc's own emitter and calibration code (they decide
  which TFLite ops Vela sees);
* how the oracle calibrates (:data:`CALIBRATION`).

Two models with equal keys get equal estimates; different keys for the same
model (say, another node order) only cost a cache miss.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from nirc.target import Target

SIGNATURE_VERSION = 1
"""Bump when the serialization or the cached :class:`~nirc.cost.types.Cost` changes meaning."""

CALIBRATION_SEED = 0
CALIBRATION_SAMPLES = 2
CALIBRATION = {"kind": "synthetic-normal", "seed": CALIBRATION_SEED, "samples": CALIBRATION_SAMPLES, "method": "minmax"}
"""How the oracle makes int8 ranges. Latency does not depend on activation values, but the
int8 scales decide a few lowerings (e.g. rescaling ops), so the recipe is part of the key."""

# Source files whose behaviour changes the TFLite that Vela compiles, or what the oracle records.
_BACKEND_SOURCES = ("tflite", "quant/ranges.py", "backend.py", "ir/load.py", "ir/model.py", "cost/oracle.py")


def _hash_array(array: np.ndarray) -> str:
    data = np.ascontiguousarray(array)
    return f"{data.dtype.str}:{list(data.shape)}:{hashlib.sha256(data.tobytes()).hexdigest()}"


def _hash_tensor(tensor: onnx.TensorProto) -> str:
    """Hash of a tensor's dtype, shape and values; raw bytes are hashed without a numpy copy."""
    if tensor.HasField("raw_data") and tensor.data_location != onnx.TensorProto.EXTERNAL:
        digest = hashlib.sha256(tensor.raw_data).hexdigest()
        return f"{tensor.data_type}:{list(tensor.dims)}:{digest}"
    return _hash_array(numpy_helper.to_array(tensor))


def _attribute(attr: onnx.AttributeProto) -> Any:
    """A JSON-able, exact rendering of one attribute (floats as hex, tensors hashed)."""
    kind = attr.type
    A = onnx.AttributeProto
    if kind == A.INT:
        return int(attr.i)
    if kind == A.FLOAT:
        return float(attr.f).hex()
    if kind == A.STRING:
        return attr.s.hex()
    if kind == A.INTS:
        return [int(v) for v in attr.ints]
    if kind == A.FLOATS:
        return [float(v).hex() for v in attr.floats]
    if kind == A.STRINGS:
        return [s.hex() for s in attr.strings]
    if kind == A.TENSOR:
        return _hash_tensor(attr.t)
    if kind == A.TENSORS:
        return [_hash_tensor(t) for t in attr.tensors]
    if kind in (A.GRAPH, A.GRAPHS, A.SPARSE_TENSOR, A.SPARSE_TENSORS, A.TYPE_PROTO, A.TYPE_PROTOS):
        # Rare in NPU graphs (control flow); names inside make this conservative, never wrong.
        return hashlib.sha256(attr.SerializeToString(deterministic=True)).hexdigest()
    return attr.ref_attr_name or None


def _value_type(value: onnx.ValueInfoProto) -> list[Any]:
    tensor_type = value.type.tensor_type
    dims: list[Any] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim]
    return [int(tensor_type.elem_type), dims]


def tensor_ids(proto: onnx.ModelProto) -> dict[str, int]:
    """Canonical number of every non-constant tensor: graph inputs first, then outputs in node order.

    The oracle records Vela's per-layer rows against these numbers, so a cached
    estimate maps onto any structurally equal model, whatever its names.
    """
    inits = {i.name for i in proto.graph.initializer}
    ids: dict[str, int] = {}
    for value in proto.graph.input:
        if value.name not in inits and value.name not in ids:
            ids[value.name] = len(ids)
    for node in proto.graph.node:
        for name in node.output:
            if name and name not in ids:
                ids[name] = len(ids)
    return ids


def graph_structure(proto: onnx.ModelProto) -> dict[str, Any]:
    """The canonical, name-free description of ``proto``'s graph that the key hashes."""
    graph = proto.graph
    ids = tensor_ids(proto)
    inits = {i.name: i for i in graph.initializer}
    const_index: dict[str, int] = {}
    consts: list[str] = []

    def ref(name: str) -> str:
        if not name:
            return ""
        if name in ids:
            return f"t{ids[name]}"
        if name in inits:
            if name not in const_index:
                const_index[name] = len(consts)
                consts.append(_hash_tensor(inits[name]))
            return f"c{const_index[name]}"
        return f"?{name}"  # dangling input: keep the name so the key stays conservative

    inputs = [_value_type(v) for v in graph.input if v.name not in inits]
    nodes = [
        [
            node.op_type,
            node.domain if node.domain != "ai.onnx" else "",
            {a.name: _attribute(a) for a in sorted(node.attribute, key=lambda a: a.name)},
            [ref(n) for n in node.input],
            len(node.output),
        ]
        for node in graph.node
    ]
    opsets = sorted((o.domain if o.domain != "ai.onnx" else "", int(o.version)) for o in proto.opset_import)
    return {
        "inputs": inputs,
        "nodes": nodes,
        "consts": consts,
        "outputs": [ref(v.name) for v in graph.output],
        "opsets": opsets,
    }


def target_identity(target: Target) -> dict[str, str]:
    """What of a target Vela sees: the three command-line choices."""
    return {
        "accelerator_config": target.accelerator_config,
        "system_config": target.system_config,
        "memory_mode": target.memory_mode,
    }


@functools.cache
def backend_fingerprint() -> str:
    """sha256 of nirc's emitter/calibration sources, so editing them invalidates old estimates."""
    import nirc

    root = Path(nirc.__file__).resolve().parent
    digest = hashlib.sha256(nirc.__version__.encode())
    for rel in _BACKEND_SOURCES:
        path = root / rel
        files: Iterable[Path] = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            if file.is_file():
                digest.update(file.relative_to(root).as_posix().encode())
                digest.update(file.read_bytes())
    return digest.hexdigest()


@functools.cache
def vela_version() -> str:
    """Installed Vela version, memoised (the metadata lookup costs more than a cache hit)."""
    from nirc.targets.ethos_u.vela_driver import vela_version as installed

    return str(installed())


def signature(proto: onnx.ModelProto, target: Target) -> str:
    """The cache key of ``proto`` on ``target``: a sha256 hex digest."""
    payload = {
        "version": SIGNATURE_VERSION,
        "graph": graph_structure(proto),
        "target": target_identity(target),
        "vela": vela_version(),
        "backend": backend_fingerprint(),
        "calibration": CALIBRATION,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
