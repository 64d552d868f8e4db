"""A folder of images as calibration samples for an NCHW image input.

Pillow is optional: nirc does not depend on it, so it is imported only when a
folder is actually given, and its absence is a clear :class:`CalibrationError`
rather than an ImportError. Preprocessing is fixed and deterministic (bilinear
resize to the input's HxW, RGB or grayscale, [0, 1], then per-channel
``(x - mean) / std``) because calibration must see what the deployed model will
see; anything fancier belongs in a user-made ``.npy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nirc.errors import CalibrationError

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp"})


def load_image_folder(
    folder: Path,
    shape: tuple[int, ...],
    *,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    count: int,
) -> tuple[list[np.ndarray], int]:
    """The first ``count`` images of ``folder`` (sorted by file name) as ``shape`` float32 arrays.

    Returns the arrays and the number of images in the folder.
    """
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise CalibrationError(
            f"{folder}: an image folder feeds an NCHW input with 1 or 3 channels, the input's shape is {shape}"
        )
    _, channels, height, width = shape
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.name,
    )
    if not files:
        raise CalibrationError(
            f"{folder}: no {'/'.join(sorted(s.lstrip('.') for s in IMAGE_SUFFIXES))} images in the folder"
        )
    offset = _per_channel(mean, channels, 0.0, "mean", folder)
    scale = _per_channel(std, channels, 1.0, "std", folder)
    if np.any(scale == 0):
        raise CalibrationError(f"{folder}: std must be non-zero, got {list(scale)}")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise CalibrationError(
            f"{folder}: reading an image folder needs Pillow, which is not installed "
            "(pip install pillow), or pass the samples as an .npy/.npz"
        ) from None

    mode = "RGB" if channels == 3 else "L"
    samples = []
    for file in files[:count]:
        try:
            with Image.open(file) as image:
                resized = image.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
        except (OSError, UnidentifiedImageError) as exc:
            raise CalibrationError(f"{file}: not a readable image ({exc})") from None
        pixels = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
        chw = pixels.reshape(height, width, channels).transpose(2, 0, 1)
        normalised = (chw - offset[:, None, None]) / scale[:, None, None]
        samples.append(np.ascontiguousarray(normalised, dtype=np.float32).reshape(shape))
    return samples, len(files)


def _per_channel(values: Sequence[float] | None, channels: int, default: float, what: str, folder: Path) -> np.ndarray:
    if values is None:
        return np.full(channels, default, dtype=np.float32)
    array = np.asarray(values, dtype=np.float32).reshape(-1)
    if array.size == 1:
        return np.full(channels, array[0], dtype=np.float32)
    if array.size != channels:
        raise CalibrationError(
            f"{folder}: {what} needs 1 or {channels} values for a {channels}-channel input, got {list(values)}"
        )
    return array
