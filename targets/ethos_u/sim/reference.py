"""The reference the compiled artifact must reproduce: the pre-Vela int8 model in TFLite Micro.

Why TFLite Micro: it is the runtime that runs beside the NPU on the device, and its
reference kernels are what Ethos-U is specified to match.  LiteRT's ``BUILTIN_REF``
FULLY_CONNECTED resolves rounding ties differently (1 LSB in a logit of
MobileNetV2/ResNet18/MobileNetV3 heads, where TFLite Micro and the NPU agree), so
LiteRT only runs what TFLite Micro cannot: when TFLite Micro lacks one op of a
model (e.g. RELU_0_TO_1), the model runs op by op, every op TFLite Micro has in
TFLite Micro and only the others in LiteRT's reference kernels.  Every activation
is kept, so intermediate results can be compared too.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from nirc.targets.ethos_u.sim import container
from nirc.targets.ethos_u.sim.runner import one_op_models


@dataclass
class ReferenceRun:
    """One reference inference: outputs by name, every activation by int8 tensor index."""

    outputs: dict[str, np.ndarray]
    tensors: dict[int, np.ndarray]


def model_bytes(source: Path | bytes) -> bytes:
    return Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence C-level stdout/stderr: TFLite Micro prints "Didn't find op ..." before it raises."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _litert(data: bytes, kernels: str, keep: bool = False) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = (
        OpResolverType.BUILTIN_REF if kernels == "reference" else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter = Interpreter(
        model_content=data, num_threads=1, experimental_op_resolver_type=resolver,
        experimental_preserve_all_tensors=keep,
    )  # fmt: skip
    interpreter.allocate_tensors()
    return interpreter


class LiteRTModel:
    """A whole model in LiteRT (the fallback, or ``kernels="optimized"``)."""

    def __init__(self, data: bytes, kernels: str, *, keep: bool) -> None:
        self.interpreter = _litert(data, kernels, keep)
        self.activations = [t.index for t in container.load(data).tensors if t.data is None] if keep else []

    def run(self, inputs: Mapping[str, np.ndarray]) -> ReferenceRun:
        interpreter = self.interpreter
        for detail in interpreter.get_input_details():
            name = detail["name"]
            if name not in inputs:
                raise KeyError(f"missing input {name!r}")
            interpreter.set_tensor(detail["index"], np.asarray(inputs[name]).reshape(detail["shape"]))
        interpreter.invoke()
        outputs = {d["name"]: np.array(interpreter.get_tensor(d["index"])) for d in interpreter.get_output_details()}
        return ReferenceRun(outputs, {i: np.array(interpreter.get_tensor(i)) for i in self.activations})


def _micro(data: bytes, arena: int, keep: bool) -> Any:
    from tflite_micro.python.tflite_micro import runtime

    with _quiet():
        if keep:
            config = runtime.InterpreterConfig.kPreserveAllTensors
            return runtime.Interpreter.from_bytes(data, arena_size=arena, intrepreter_config=config)
        return runtime.Interpreter.from_bytes(data, arena_size=arena)


MICRO_ARENA_BYTES = (16 << 20, 256 << 20)
"""TFLite Micro arena sizes to try for a whole model: it fails cleanly when the arena is too small."""


class MicroModel:
    """A whole model in TFLite Micro, every tensor preserved when ``keep``."""

    def __init__(self, data: bytes, *, keep: bool) -> None:
        self.data = data
        parsed = container.load(data)  # TFLite Micro's details carry no names: take them from the flatbuffer
        self.in_names = [parsed.tensors[i].name for i in parsed.inputs]
        self.out_names = [parsed.tensors[i].name for i in parsed.outputs]
        self.activations = [t.index for t in parsed.tensors if t.data is None] if keep else []
        self.keep = keep
        self.interpreter: Any = None

    def _interpreter(self) -> Any:
        """Built once, at the smallest arena that works (TFLite Micro fails cleanly when it is too small)."""
        if self.interpreter is None:
            error: Exception | None = None
            for arena in MICRO_ARENA_BYTES:
                try:
                    self.interpreter = _micro(self.data, arena, self.keep)
                    break
                except (RuntimeError, ValueError) as exc:
                    error = exc
            else:
                raise RuntimeError(f"TFLite Micro cannot run the model: {error}")
        return self.interpreter

    def run(self, inputs: Mapping[str, np.ndarray]) -> ReferenceRun:
        """Raises RuntimeError when TFLite Micro cannot run the model (an op it lacks, no arena large enough)."""
        interpreter = self._interpreter()
        try:
            for i, name in enumerate(self.in_names):
                if name not in inputs:
                    raise KeyError(f"missing input {name!r}")
                shape = tuple(int(d) for d in interpreter.get_input_details(i)["shape"])
                interpreter.set_input(np.ascontiguousarray(np.asarray(inputs[name]).reshape(shape)), i)
            with _quiet():
                interpreter.invoke()
        except ValueError as exc:
            raise RuntimeError(f"TFLite Micro cannot run the model: {exc}") from exc
        outputs = {name: np.array(interpreter.get_output(i)) for i, name in enumerate(self.out_names)}
        tensors: dict[int, np.ndarray] = {}
        for index in self.activations:
            got = interpreter.GetTensor(index, 0)
            if isinstance(got, dict) and "tensor_data" in got:
                tensors[index] = np.array(got["tensor_data"])
        return ReferenceRun(outputs, tensors)


class PerOpMicro:
    """The model op by op: TFLite Micro for every op it has, LiteRT's reference kernels for the rest."""

    def __init__(self, data: bytes) -> None:
        self.model = container.load(data)
        models = one_op_models(self.model, self.model.ops)
        self.steps: list[tuple[container.OpInfo, Any, bool]] = []  # op, interpreter, in TFLite Micro
        self.litert_ops: list[str] = []
        for op in self.model.ops:
            one = models[op.index]
            size = sum(self.model.tensors[i].nbytes for i in (*op.inputs, *op.outputs) if i >= 0)
            try:
                interpreter = _micro(one, 4 * size + (1 << 20), False)
                self.steps.append((op, interpreter, True))
            except (RuntimeError, ValueError):
                self.steps.append((op, _litert(one, "reference"), False))
                self.litert_ops.append(f"{op.opcode} #{op.index}")

    def feeds(self, op: container.OpInfo, values: Mapping[int, np.ndarray]) -> list[np.ndarray]:
        """The op's activation inputs (each once) from ``values`` by tensor index."""
        return [values[i] for i in dict.fromkeys(op.inputs) if i >= 0 and self.model.tensors[i].data is None]

    def run_op(self, step: int, feeds: list[np.ndarray]) -> list[np.ndarray]:
        """Step ``step`` (the op of that index) on ``feeds``; outputs in the model's shapes."""
        op, interpreter, micro = self.steps[step]
        if micro:
            for k, feed in enumerate(feeds):
                interpreter.set_input(np.ascontiguousarray(feed), k)
            with _quiet():
                interpreter.invoke()
            outs = [np.array(interpreter.get_output(k)) for k in range(len(op.outputs))]
        else:
            for detail, feed in zip(interpreter.get_input_details(), feeds, strict=True):
                interpreter.set_tensor(detail["index"], feed)
            interpreter.invoke()
            outs = [np.array(interpreter.get_tensor(d["index"])) for d in interpreter.get_output_details()]
        return [out.reshape(self.model.tensors[i].shape) for i, out in zip(op.outputs, outs, strict=True)]

    def run(self, inputs: Mapping[str, np.ndarray], overrides: Mapping[int, np.ndarray] | None = None) -> ReferenceRun:
        """Every op in order; an op output in ``overrides`` (by tensor index) continues with that value instead."""
        model = self.model
        overrides = overrides or {}
        values: dict[int, np.ndarray] = {}
        for i in model.inputs:
            name = model.tensors[i].name
            if name not in inputs:
                raise KeyError(f"missing input {name!r}")
            values[i] = np.ascontiguousarray(np.asarray(inputs[name]).reshape(model.tensors[i].shape))
        for step, (op, _, _) in enumerate(self.steps):
            values.update(zip(op.outputs, self.run_op(step, self.feeds(op, values)), strict=True))
            for i in op.outputs:
                if i in overrides:
                    values[i] = np.asarray(overrides[i]).reshape(model.tensors[i].shape).astype(values[i].dtype)
        outputs = {model.tensors[i].name: values[i] for i in model.outputs}
        return ReferenceRun(outputs, {i: v for i, v in values.items() if model.tensors[i].data is None})

    def kernel_differences(self, run: ReferenceRun) -> list[str]:
        """Ops whose TFLite Micro result, from ``run``'s own inputs, differs from ``run``'s (another runtime)."""
        found = []
        for step, (op, _, micro) in enumerate(self.steps):
            if not micro or any(i not in run.tensors for i in op.outputs):
                continue
            values = {**run.tensors}
            try:
                outs = self.run_op(step, self.feeds(op, values))
            except KeyError:
                continue
            if any(not np.array_equal(out, run.tensors[i]) for i, out in zip(op.outputs, outs, strict=True)):
                found.append(f"{op.opcode} #{op.index}")
        return found


class Reference:
    """What the compiled artifact must reproduce, built once and run on every input.

    ``kernels="reference"``: TFLite Micro on the whole model, else op by op with LiteRT's
    reference kernels only for the ops TFLite Micro lacks; ``"optimized"``: LiteRT's
    optimised kernels; ``runtime="litert"``: LiteRT's reference kernels (the second
    opinion).  ``keep`` also returns every intermediate activation.
    """

    def __init__(
        self,
        int8_tflite: Path | bytes,
        kernels: Literal["reference", "optimized"] = "reference",
        *,
        keep: bool = True,
        runtime: Literal["micro", "litert"] = "micro",
    ) -> None:
        self.data = model_bytes(int8_tflite)
        self.kernels = kernels
        self.keep = keep
        self.model = container.load(self.data)
        self._runner: MicroModel | PerOpMicro | LiteRTModel
        if kernels != "reference" or runtime == "litert":
            self._runner = LiteRTModel(self.data, kernels, keep=keep)
            return
        try:
            self._runner = MicroModel(self.data, keep=keep)
        except ImportError:
            self._runner = LiteRTModel(self.data, kernels, keep=keep)

    @property
    def description(self) -> str:
        if isinstance(self._runner, MicroModel):
            return "TFLite Micro reference kernels on the pre-Vela int8 model"
        if isinstance(self._runner, PerOpMicro):
            counts = Counter(name.split(" #")[0] for name in self._runner.litert_ops)
            litert = ", ".join(f"{op} x{n}" for op, n in sorted(counts.items())) or "none"
            return (
                "TFLite Micro reference kernels on the pre-Vela int8 model, op by op "
                f"(LiteRT reference kernels for the ops TFLite Micro lacks: {litert})"
            )
        return f"LiteRT {self.kernels} kernels on the pre-Vela int8 model"

    @property
    def is_litert(self) -> bool:
        """The whole model runs in LiteRT (asked for as a second opinion, or TFLite Micro is missing)."""
        return isinstance(self._runner, LiteRTModel)

    @property
    def litert_ops(self) -> list[str]:
        """Ops the reference ran in LiteRT rather than TFLite Micro (all of them: ``["*"]``)."""
        if isinstance(self._runner, PerOpMicro):
            return list(self._runner.litert_ops)
        return ["*"] if isinstance(self._runner, LiteRTModel) else []

    def run(self, inputs: Mapping[str, np.ndarray]) -> ReferenceRun:
        if isinstance(self._runner, MicroModel):
            try:
                return self._runner.run(inputs)
            except RuntimeError:
                self._runner = PerOpMicro(self.data)  # for this and every later input
        return self._runner.run(inputs)


AHEAD_SECONDS = 0.5
"""A reference run at least this slow sends the remaining inputs to a second process: TFLite Micro
holds the GIL, and on ResNet18-224 it took 60% of validation (1.3 s an input) beside the functional
model's 0.8 s, so the two overlap on a second core. Faster models stay in process (the worker costs
about a second to start)."""

# A plain ``python -c`` child, not multiprocessing: spawn re-imports the caller's __main__, which a
# program embedding nirc may not guard. Frames are length-prefixed pickles over the pipes.
_AHEAD_SOURCE = """
import pickle, struct, sys
out = sys.stdout.buffer
def send(obj):
    blob = pickle.dumps(obj, protocol=5)
    out.write(struct.pack("<Q", len(blob)) + blob)
    out.flush()
def recv():
    head = sys.stdin.buffer.read(8)
    if len(head) < 8:
        raise SystemExit(0)
    return pickle.loads(sys.stdin.buffer.read(struct.unpack("<Q", head)[0]))
paths, data, kernels, keep, runtime, feeds = recv()
sys.path[:0] = paths
from nirc.targets.ethos_u.sim.reference import Reference
reference = Reference(data, kernels, keep=keep, runtime=runtime)
for feed in feeds:
    run = reference.run(feed)
    send((run.outputs, run.tensors))
"""


class _AheadWorker:
    """A child process running the reference on a list of feeds, one result ahead of the reader."""

    def __init__(self, reference: Reference, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        runtime = "litert" if reference.is_litert else "micro"
        message = (list(sys.path), reference.data, reference.kernels, reference.keep, runtime, [dict(f) for f in feeds])
        blob = pickle.dumps(message, protocol=5)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _AHEAD_SOURCE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        stdin = self.proc.stdin
        assert stdin is not None

        def write() -> None:
            with contextlib.suppress(OSError):
                stdin.write(struct.pack("<Q", len(blob)) + blob)
                stdin.close()

        threading.Thread(target=write, daemon=True).start()

    def next(self) -> ReferenceRun | None:
        """The next result, or None when the worker failed (the caller computes it itself)."""
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            head = stdout.read(8)
            if len(head) < 8:
                return None
            outputs, tensors = pickle.loads(stdout.read(struct.unpack("<Q", head)[0]))
        except (OSError, pickle.UnpicklingError, EOFError, ValueError):
            return None
        return ReferenceRun(outputs, tensors)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def runs_ahead(reference: Reference, feeds: Sequence[Mapping[str, np.ndarray]]) -> Iterator[ReferenceRun]:
    """``reference.run`` of each feed in order; a slow reference runs the later feeds in a worker process.

    The results are the same as in process (same runtime, same model bytes); once the worker fails
    for any reason, the remaining feeds run in process.
    """
    if not feeds:
        return
    start = time.perf_counter()
    first = reference.run(feeds[0])
    worker: _AheadWorker | None = None
    if time.perf_counter() - start >= AHEAD_SECONDS and len(feeds) > 1 and (os.cpu_count() or 1) > 1:
        try:
            worker = _AheadWorker(reference, feeds[1:])
        except (OSError, pickle.PicklingError):
            worker = None
    try:
        yield first
        for feed in feeds[1:]:
            run = worker.next() if worker is not None else None
            if run is None and worker is not None:
                worker.close()
                worker = None
            yield run if run is not None else reference.run(feed)
    finally:
        if worker is not None:
            worker.close()
