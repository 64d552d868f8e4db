"""Resize -> RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR, chosen by exact equivalence.

ONNX describes resampling by a coordinate transformation (half_pixel, asymmetric,
align_corners, ...) plus a rounding mode; TFLite by two flags.  Instead of a
hand-written table (easy to get subtly wrong, e.g. half_pixel with
round_prefer_floor differs from TFLite's half-pixel nearest on even downscales), the
lowering computes, per spatial axis, the source index/coordinate ONNX reads for every
output pixel and the one each TFLite flag combination reads, and picks a combination
that agrees everywhere.  If none does, the node is reported as unsupported.
"""

from __future__ import annotations

import numpy as np
import onnx

from nirc.errors import BackendError
from nirc.tflite.builder import BuiltinOperator as Op
from nirc.tflite.builder import Options
from nirc.tflite.context import Emitter
from nirc.tflite.graph import GraphInfo, attr_int, attr_ints, attr_str

_FLAGS = ((False, False), (False, True), (True, False))


def _attr_str(node: onnx.NodeProto, key: str, default: str) -> str:
    return attr_str(node, key, default)


def _scales(info: GraphInfo, node: onnx.NodeProto) -> list[float] | None:
    """ONNX per-axis scale factors (what the coordinate transform divides by)."""
    in_shape = info.shape(node.input[0])
    out_shape = info.shape(node.output[0])
    rank = len(in_shape)
    axes = [a % rank for a in attr_ints(node, "axes", range(rank))]
    scales_in = info.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes_in = info.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    result = [1.0] * rank
    if scales_in is not None and scales_in.size:
        for a, s in zip(axes, scales_in.reshape(-1), strict=True):
            result[a] = float(s)
        return result
    if sizes_in is None:
        return None
    ratios = {a: float(s) / in_shape[a] for a, s in zip(axes, sizes_in.reshape(-1), strict=True)}
    policy = _attr_str(node, "keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        common = min(ratios.values()) if policy == "not_larger" else max(ratios.values())
        ratios = dict.fromkeys(ratios, common)
    for a, r in ratios.items():
        result[a] = r
    for a in range(rank):
        if a not in ratios:
            result[a] = out_shape[a] / in_shape[a]
    return result


def _onnx_coords(
    ctm: str, x: np.ndarray, in_size: int, out_size: int, scale: float, out_f: float
) -> np.ndarray:
    """Source coordinate of each output index; ``out_f`` is the resized length used
    by align_corners / pytorch_half_pixel (see :func:`resize_flags`)."""
    if ctm == "align_corners":
        return x * (in_size - 1) / (out_f - 1) if out_f != 1 else np.zeros_like(x)
    if ctm == "asymmetric":
        return x / scale
    if ctm == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_f != 1 else np.full_like(x, -0.5)
    if ctm == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if ctm == "half_pixel_symmetric":
        offset = in_size / 2 * (1 - out_size / out_f)
        return offset + (x + 0.5) / scale - 0.5
    raise BackendError(f"coordinate_transformation_mode '{ctm}' is not supported")


def _onnx_nearest(coords: np.ndarray, mode: str, in_size: int) -> np.ndarray:
    is_int = coords == np.floor(coords)
    if mode == "round_prefer_floor":
        idx = np.ceil(coords - 0.5)
    elif mode == "round_prefer_ceil":
        idx = np.floor(coords + 0.5)
    elif mode == "floor":
        idx = np.floor(coords)
    else:
        idx = np.ceil(coords)
    idx = np.where(is_int, coords, idx)
    return np.clip(idx, 0, in_size - 1).astype(np.int64)


def _tfl_scale(in_size: int, out_size: int, align: bool) -> np.float32:
    if align and out_size > 1:
        return np.float32(in_size - 1) / np.float32(out_size - 1)
    return np.float32(in_size) / np.float32(out_size)


def _tfl_nearest(in_size: int, out_size: int, align: bool, half: bool) -> np.ndarray:
    y = np.arange(out_size, dtype=np.float32)
    v = (y + np.float32(0.5 if half else 0.0)) * _tfl_scale(in_size, out_size, align)
    idx = (
        np.where(v >= 0, np.floor(v + np.float32(0.5)), np.ceil(v - np.float32(0.5)))
        if align
        else np.floor(v)
    )
    idx = np.minimum(idx, in_size - 1)
    if half:
        idx = np.maximum(idx, 0)
    return np.asarray(idx, dtype=np.int64)


def _tfl_linear(in_size: int, out_size: int, align: bool, half: bool) -> np.ndarray:
    y = np.arange(out_size, dtype=np.float32)
    s = _tfl_scale(in_size, out_size, align)
    v = (y + np.float32(0.5)) * s - np.float32(0.5) if half else y * s
    return np.asarray(np.clip(v.astype(np.float64), 0, in_size - 1), dtype=np.float64)


def resize_flags(info: GraphInfo, node: onnx.NodeProto) -> tuple[bool, bool] | str:
    """(align_corners, half_pixel_centers) reproducing the node exactly, or why none does."""
    mode = _attr_str(node, "mode", "nearest")
    ctm = _attr_str(node, "coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear"):
        return f"mode '{mode}' is not supported"
    if ctm == "tf_crop_and_resize":
        return "coordinate_transformation_mode 'tf_crop_and_resize' is not supported"
    if attr_int(node, "antialias", 0):
        return "antialias is not supported"
    if not info.has_shape(node.input[0]) or not info.has_shape(node.output[0]):
        return "shapes unknown"
    in_shape, out_shape = info.shape(node.input[0]), info.shape(node.output[0])
    if len(in_shape) != 4 or in_shape[:2] != out_shape[:2]:
        return "only spatial resizing of 4-D NCHW tensors is supported"
    scales = _scales(info, node)
    if scales is None:
        return "scales/sizes are not constant"
    nearest_mode = _attr_str(node, "nearest_mode", "round_prefer_floor")
    for align, half in _FLAGS:
        ok = True
        for axis in (2, 3):
            i, o, s = in_shape[axis], out_shape[axis], scales[axis]
            # The spec's "length_resized" is read as scale*length by the reference
            # implementation and as the integer output size by onnxruntime; they differ
            # when scale*length is fractional, so accept only flags matching both.
            for out_f in {s * i, float(o)}:
                coords = _onnx_coords(ctm, np.arange(o, dtype=np.float64), i, o, s, out_f)
                if mode == "nearest":
                    tfl = _tfl_nearest(i, o, align, half)
                    ok &= bool(np.array_equal(_onnx_nearest(coords, nearest_mode, i), tfl))
                else:
                    want = np.clip(coords, 0, i - 1)
                    ok &= bool(np.allclose(want, _tfl_linear(i, o, align, half), rtol=0, atol=1e-5))
        if ok:
            return align, half
    return f"no TFLite resize matches mode={mode}, coordinate_transformation_mode={ctm}"


def check_resize(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    flags = resize_flags(info, node)
    return flags if isinstance(flags, str) else None


def lower_resize(em: Emitter, node: onnx.NodeProto) -> None:
    flags = resize_flags(em.info, node)
    if isinstance(flags, str):
        raise BackendError(f"Resize '{node.name}': {flags}")
    align, half = flags
    name = node.output[0]
    x = em.requant(em.value(node.input[0]), em.qparams(name), name)
    y = em.define(name)
    _, _, oh, ow = em.shape(name)
    size = em.int_const(f"{name}/size", [oh, ow])
    nearest = _attr_str(node, "mode", "nearest") == "nearest"
    table = "ResizeNearestNeighborOptions" if nearest else "ResizeBilinearOptions"
    opts = Options(table, (("AlignCorners", align), ("HalfPixelCenters", half)))
    em.op(Op.RESIZE_NEAREST_NEIGHBOR if nearest else Op.RESIZE_BILINEAR, [x.tensor, size], [y.tensor], opts)
