"""Calibration data: load user samples (or make synthetic ones) in the model's own layout.

Why a loader of its own: int8 ranges are only as good as the data they were
measured on, and the ways users hand data over are error-prone (an NHWC image
array for an NCHW model, a stray batch axis, integer pixels). Every check lives
here so that a mistake is a one-line :class:`CalibrationError` naming the file
and the expected vs actual shape, not an ONNX Runtime error deep inside
calibration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nirc.errors import CalibrationError
from nirc.quant.images import IMAGE_SUFFIXES, load_image_folder

Sample = dict[str, np.ndarray]


@dataclass(frozen=True)
class CalibrationSet:
    """Samples to run the float model on, one dict of inputs per sample.

    Attributes:
        samples: each maps every ONNX input name to a float32 array with batch
            1 in the ONNX layout (the input's shape with its batch set to 1).
        synthetic: True when no data was given and the samples are random
            normal noise; ranges from them are placeholders, so callers must
            warn loudly and record it in the report.
        source: what the samples came from, for messages and reports.
    """

    samples: tuple[Sample, ...]
    synthetic: bool
    source: str

    def __len__(self) -> int:
        return len(self.samples)


def load_calibration(
    path: Path | None,
    inputs: Mapping[str, tuple[int, ...]],
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    count: int = 16,
    seed: int = 0,
) -> CalibrationSet:
    """Load at most ``count`` calibration samples for a model with ``inputs``.

    Args:
        path: an ``.npy`` (single-input models), an ``.npz`` keyed by input
            name, a folder of png/jpg/bmp images (single image input), or None
            for synthetic standard-normal data drawn with ``seed``.
        inputs: ONNX input name -> static shape, batch first (must be 1).
        mean, std: per-channel normalisation of images after scaling to [0, 1];
            only used for image folders.
        count: maximum number of samples; files are read in order (images in
            sorted filename order) and cut after ``count``.
        seed: seed of the synthetic data.

    Each sample array in an ``.npy``/``.npz`` is ``array[i]`` and must have the
    input's shape without its batch axis, or with a batch of 1: for a
    1x3x224x224 input, ``(N, 3, 224, 224)`` or ``(N, 1, 3, 224, 224)``.
    """
    if count < 1:
        raise CalibrationError(f"calibration sample count must be at least 1, got {count}")
    shapes = _sample_shapes(inputs)
    if path is None:
        return _synthetic(shapes, count, seed)
    path = Path(path)
    if path.is_dir():
        if len(shapes) != 1:
            raise CalibrationError(
                f"{path}: an image folder can only feed a single-input model, "
                f"this one has inputs {', '.join(shapes)}; use an .npz keyed by input name"
            )
        ((name, shape),) = shapes.items()
        images, total = load_image_folder(path, shape, mean=mean, std=std, count=count)
        return CalibrationSet(
            samples=tuple({name: image} for image in images),
            synthetic=False,
            source=_describe(path, len(images), total),
        )
    if not path.exists():
        raise CalibrationError(f"{path}: calibration data not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _from_npy(path, shapes, count)
    if suffix == ".npz":
        return _from_npz(path, shapes, count)
    raise CalibrationError(
        f"{path}: unknown calibration data format {path.suffix or '(no extension)'!r}; "
        f"expected .npy, .npz or a folder of {'/'.join(sorted(s.lstrip('.') for s in IMAGE_SUFFIXES))} images"
    )


def _sample_shapes(inputs: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Per-input sample shape (batch 1), rejecting what no calibration data can match."""
    if not inputs:
        raise CalibrationError("the model has no inputs to calibrate")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in inputs.items():
        dims = tuple(shape)
        if not dims or not all(isinstance(d, int | np.integer) and d > 0 for d in dims):
            raise CalibrationError(f"input {name!r}: calibration needs a static shape, got {dims}")
        if dims[0] != 1:
            raise CalibrationError(
                f"input {name!r}: calibration runs one sample at a time and needs batch 1, got shape {dims}"
            )
        shapes[name] = tuple(int(d) for d in dims)
    return shapes


def _synthetic(shapes: Mapping[str, tuple[int, ...]], count: int, seed: int) -> CalibrationSet:
    rng = np.random.default_rng(seed)
    samples = tuple(
        {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()} for _ in range(count)
    )
    return CalibrationSet(samples=samples, synthetic=True, source=f"synthetic N(0,1), seed {seed}")


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def _check_magic(path: Path, magic: bytes, kind: str, writer: str) -> None:
    """Name the real problem for a file that only carries the suffix (a text file, a CSV, a PNG)."""
    try:
        with path.open("rb") as f:
            head = f.read(len(magic))
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot read ({exc.strerror})") from None
    if head != magic:
        raise CalibrationError(
            f"{path}: not an {kind} file (it does not start with {kind}'s header); write one with {writer}"
        )


def _npy_problem(exc: Exception) -> str:
    """NumPy's pickle message advises ``allow_pickle=True``, i.e. running code from the file: never relay that."""
    if "pickle" in str(exc).lower() or "python objects" in str(exc).lower():
        return "holds Python objects (pickled data), which nirc does not load; save a numeric array with numpy.save"
    return f"unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"


def _from_npy(path: Path, shapes: Mapping[str, tuple[int, ...]], count: int) -> CalibrationSet:
    if len(shapes) != 1:
        raise CalibrationError(
            f"{path}: an .npy holds one array but the model has inputs {', '.join(shapes)}; "
            "use an .npz keyed by input name"
        )
    ((name, shape),) = shapes.items()
    _check_magic(path, _NPY_MAGIC, ".npy", "numpy.save")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: {_npy_problem(exc)}") from None
    arrays = _split_samples(array, shape, count, f"{path}")
    return CalibrationSet(
        samples=tuple({name: a} for a in arrays), synthetic=False, source=_describe(path, len(arrays), len(array))
    )


def _from_npz(path: Path, shapes: Mapping[str, tuple[int, ...]], count: int) -> CalibrationSet:
    _check_magic(path, _ZIP_MAGIC, ".npz", "numpy.savez")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: {_npy_problem(exc)}") from None
    with archive:
        missing = [name for name in shapes if name not in archive.files]
        if missing:
            raise CalibrationError(
                f"{path}: no array for input {missing[0]!r}; "
                f"expected keys {sorted(shapes)}, got {sorted(archive.files)}"
            )
        per_input: dict[str, list[np.ndarray]] = {}
        totals: dict[str, int] = {}
        for name, shape in shapes.items():
            try:
                array = archive[name]
            except ValueError as exc:
                raise CalibrationError(f"{path}: array {name!r} is not readable ({exc})") from None
            per_input[name] = _split_samples(array, shape, count, f"{path}[{name!r}]")
            totals[name] = len(array)
    if len(set(totals.values())) > 1:
        raise CalibrationError(f"{path}: inputs have different sample counts {totals}")
    n = len(next(iter(per_input.values())))
    samples = tuple({name: arrays[i] for name, arrays in per_input.items()} for i in range(n))
    return CalibrationSet(samples=samples, synthetic=False, source=_describe(path, n, next(iter(totals.values()))))


def _split_samples(array: np.ndarray, shape: tuple[int, ...], count: int, where: str) -> list[np.ndarray]:
    """``array[i]`` for the first ``count`` samples, as float32 with batch 1."""
    per_sample = shape[1:]
    got = tuple(array.shape)
    if got[1:] not in (per_sample, shape):
        hint = ""
        if len(per_sample) == 3 and got[1:] == (per_sample[1], per_sample[2], per_sample[0]):
            hint = " (the data looks NHWC; the model wants NCHW: transpose(0, 3, 1, 2))"
        raise CalibrationError(
            f"{where}: expected samples of shape (N, {_dims(per_sample)}) or (N, {_dims(shape)}) "
            f"for input shape {shape}, got {got}{hint}"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise CalibrationError(
            f"{where}: expected float data, got dtype {array.dtype} "
            "(scale integer pixels and normalise them as the model expects)"
        )
    if got[0] == 0:
        raise CalibrationError(f"{where}: holds no samples (shape {got})")
    samples = []
    for i in range(min(count, got[0])):
        sample = np.ascontiguousarray(array[i], dtype=np.float32).reshape(shape)
        if not np.isfinite(sample).all():
            raise CalibrationError(f"{where}: sample {i} contains NaN or infinity")
        samples.append(sample)
    return samples


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(str(d) for d in shape)


def _describe(path: Path, used: int, total: int) -> str:
    if used == total:
        return f"{path} ({used} sample{'s' if used != 1 else ''})"
    return f"{path} (first {used} of {total} samples)"
