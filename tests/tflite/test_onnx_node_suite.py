"""ONNX backend node tests through the float32 emitter and LiteRT.

Cases come from ``onnx/backend/test/data/node`` when the installed onnx ships it,
otherwise they are generated in-process from ``onnx.backend.test.case.node`` (the
same generator writes those files; recent wheels no longer ship them).

Only cases whose op types are all supported are parametrized.  Weight-like inputs
that the node tests pass as graph inputs (Conv W/B, Gemm B/C, shape/axes/pads
tensors, ...) are frozen into initializers from the test data, since nirc always
sees weights as initializers.  A case is skipped only for a reason listed in
``SKIP_REASONS``; any other failure, including an emitter exception, fails.
"""

from __future__ import annotations

import collections
import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper, version_converter
from tflite_helpers import run_litert

from nirc.errors import UnsupportedOperatorError
from nirc.tflite import emit_tflite, supported_ops

RTOL = 1e-4
ATOL = 1e-5
OPSET = 18

#: Input slots that hold parameters rather than activations, per op type.
PARAM_SLOTS: dict[str, set[int]] = {
    "Conv": {1, 2}, "Gemm": {1, 2}, "MatMul": {1}, "BatchNormalization": {1, 2, 3, 4}, "PRelu": {1},
    "Clip": {1, 2}, "Pad": {1, 2, 3}, "Resize": {1, 2, 3}, "Slice": {1, 2, 3, 4}, "Reshape": {1},
    "Split": {1}, "Squeeze": {1}, "Unsqueeze": {1}, "ReduceMean": {1}, "Dropout": {1, 2},
    "Gather": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "ReduceSum": {1},
}  # fmt: skip

SKIP_REASONS = (
    "opset conversion failed",
    "shape inference failed",
    "unsupported input rank",
    "dynamic/int inputs",
    "non-float output",
    "unsupported attribute",
)

SUMMARY: collections.Counter[str] = collections.Counter()


@dataclass(frozen=True)
class Case:
    name: str
    model: onnx.ModelProto
    inputs: tuple[np.ndarray, ...]
    outputs: tuple[np.ndarray, ...]


def _read_pb(path: Path) -> np.ndarray:
    t = TensorProto()
    t.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(t)


@functools.cache
def _all_cases() -> tuple[Case, ...]:
    data_dir = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
    cases: list[Case] = []
    if data_dir.is_dir() and any(data_dir.iterdir()):
        for case_dir in sorted(p for p in data_dir.iterdir() if (p / "model.onnx").exists()):
            ds = case_dir / "test_data_set_0"
            if not ds.is_dir():
                continue
            model = onnx.load(str(case_dir / "model.onnx"))
            ins = tuple(
                _read_pb(p) for p in sorted(ds.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
            )
            outs = tuple(
                _read_pb(p) for p in sorted(ds.glob("output_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
            )
            cases.append(Case(case_dir.name, model, ins, outs))
        return tuple(cases)
    from onnx.backend.test.case.node import collect_testcases

    seen: set[str] = set()
    with warnings.catch_warnings():  # the generators' own numpy overflow warnings
        warnings.simplefilter("ignore")
        generated = collect_testcases()
    for tc in generated:
        if tc.kind != "node" or tc.name in seen or not tc.data_sets or tc.model is None:
            continue
        seen.add(tc.name)
        ins, outs = tc.data_sets[0]
        if not all(isinstance(a, np.ndarray) for a in [*ins, *outs]):
            continue
        cases.append(Case(tc.name, tc.model, tuple(ins), tuple(outs)))
    return tuple(sorted(cases, key=lambda c: c.name))


def _selected() -> list[Case]:
    ops = supported_ops() | {"Constant"}
    selected = []
    for case in _all_cases():
        types = {n.op_type for n in case.model.graph.node}
        domains = {n.domain for n in case.model.graph.node}
        if types and types <= ops and domains <= {"", "ai.onnx"}:
            selected.append(case)
    return selected


def _same_schemas(model: onnx.ModelProto, version: int) -> bool:
    try:
        return all(
            onnx.defs.get_schema(n.op_type, OPSET).since_version
            == onnx.defs.get_schema(n.op_type, version).since_version
            for n in model.graph.node
        )
    except onnx.defs.SchemaError:
        return False


def _prepare(case: Case) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Opset 18, weights frozen, shapes inferred; skips with a listed reason."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    if version != OPSET:
        try:
            model = version_converter.convert_version(model, OPSET)
        except Exception as exc:
            if not _same_schemas(model, version):
                pytest.skip(f"opset conversion failed: {type(exc).__name__}")
            # The converter lacks an adapter, but no op changed between the versions.
            for o in model.opset_import:
                if o.domain in ("", "ai.onnx"):
                    o.version = OPSET
    graph = model.graph
    values = {vi.name: arr for vi, arr in zip(graph.input, case.inputs, strict=False)}
    params: set[str] = set()
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if slot in PARAM_SLOTS.get(node.op_type, set()) and name:
                params.add(name)
    feeds: dict[str, np.ndarray] = {}
    keep = []
    for vi in graph.input:
        arr = values.get(vi.name)
        if arr is None:
            continue
        if vi.name in params or arr.dtype != np.float32:
            graph.initializer.append(numpy_helper.from_array(arr, vi.name))
        else:
            keep.append(vi)
            feeds[vi.name] = arr
    del graph.input[:]
    graph.input.extend(keep)
    model.ir_version = min(model.ir_version, 10)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:
        pytest.skip(f"shape inference failed: {type(exc).__name__}")
    if not feeds:
        pytest.skip("dynamic/int inputs: no float32 activation input")
    for name, arr in feeds.items():
        if arr.ndim == 0 or arr.ndim > 5:
            pytest.skip(f"unsupported input rank: {name!r} is {arr.ndim}-D")
    for out in model.graph.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT:
            pytest.skip("non-float output")
    return model, feeds


@pytest.mark.parametrize("case", _selected(), ids=lambda c: c.name)
def test_node_case(case: Case) -> None:
    try:
        model, feeds = _prepare(case)
        tfl = emit_tflite(model, dtype="float32", source=case.name)
    except UnsupportedOperatorError as exc:
        SUMMARY["skipped: unsupported attribute"] += 1
        pytest.skip(f"unsupported attribute: {exc}")
    except pytest.skip.Exception as exc:
        SUMMARY["skipped: " + str(exc.msg).split(":")[0]] += 1
        raise
    SUMMARY["failed"] += 1
    got = run_litert(tfl, feeds)
    assert len(got) == len(case.outputs)
    for want, have in zip(case.outputs, got, strict=True):
        np.testing.assert_allclose(have, np.asarray(want, np.float32), rtol=RTOL, atol=ATOL)
    SUMMARY["failed"] -= 1
    SUMMARY["passed"] += 1
