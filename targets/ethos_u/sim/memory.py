"""The NPU's view of memory: numbered regions of bytes, and feature maps laid out in them.

Why this exists: the command stream never names tensors, only (region, address)
pairs plus strides and tile bases, so every read and write of the functional
model goes through the same address arithmetic the hardware uses.  Getting that
arithmetic wrong (NHCWB16 bricks, tile switching, rolling buffers) is exactly the
kind of compiler/firmware bug a functional model must be able to expose, so it is
implemented once, here, with bounds checks on every access.
"""

from __future__ import annotations

import numpy as np
from nirc.targets.ethos_u.sim.cmdstream import DataType, FeatureMap, Layout

from nirc.errors import BackendError

_BRICK = 16


class SimulationError(BackendError):
    """The command stream asks for something the functional model cannot do or that is invalid."""


class Memory:
    """Byte arrays per base-pointer region, plus the NPU-internal SHRAM (for LUTs)."""

    def __init__(self, regions: dict[int, np.ndarray], shram_bytes: int = 96 * 1024) -> None:
        self.regions = regions
        self.shram = np.zeros(shram_bytes, dtype=np.uint8)

    def region(self, index: int) -> np.ndarray:
        buf = self.regions.get(index)
        if buf is None:
            raise SimulationError(f"access to region {index}, which this custom op does not map")
        return buf

    def span(self, region: int, address: int, length: int, *, internal: bool = False) -> np.ndarray:
        """A writable view of ``length`` bytes; raises when it leaves the region."""
        buf = self.shram if internal else self.region(region)
        if address < 0 or length < 0 or address + length > buf.size:
            where = "SHRAM" if internal else f"region {region}"
            raise SimulationError(f"{where} access [{address:#x}, {address + length:#x}) outside its {buf.size} bytes")
        return buf[address : address + length]


def element_addresses(fm: FeatureMap) -> np.ndarray:
    """Byte address of every element (H, W, C) of ``fm``, following tiles, strides and layout."""
    h, w, c = fm.height, fm.width, fm.depth
    ys = np.arange(h).reshape(-1, 1)
    xs = np.arange(w).reshape(1, -1)
    right = xs >= fm.width0
    tile = np.where(right, np.where(ys >= fm.height1, 3, 1), np.where(ys >= fm.height0, 2, 0))
    y_rel = ys - np.where(right, np.where(ys >= fm.height1, fm.height1, 0), np.where(ys >= fm.height0, fm.height0, 0))
    x_rel = xs - np.where(right, fm.width0, 0)
    bases = np.asarray(fm.bases, dtype=np.int64)[tile]
    esize = fm.dtype.size
    cs = np.arange(c, dtype=np.int64)
    if fm.layout is Layout.NHWC:
        pixel = bases + y_rel * fm.stride_y + x_rel * fm.stride_x
        chan = cs * esize
    else:
        pixel = bases + y_rel * fm.stride_y + x_rel * (_BRICK * esize)
        chan = (cs // _BRICK) * fm.stride_c + (cs % _BRICK) * esize
    addresses: np.ndarray = pixel[:, :, None] + chan[None, None, :]
    return addresses


def _numpy_dtype(dtype: DataType) -> np.dtype[np.generic]:
    return np.dtype(f"<{'i' if dtype.signed else 'u'}{dtype.size}")


def _checked(memory: Memory, fm: FeatureMap, addresses: np.ndarray, what: str) -> np.ndarray:
    buf = memory.region(fm.region)
    if addresses.size:
        lo = int(addresses.min())
        hi = int(addresses.max()) + fm.dtype.size
        if lo < 0 or hi > buf.size:
            raise SimulationError(
                f"{what} {fm.height}x{fm.width}x{fm.depth} spans [{lo:#x}, {hi:#x}) outside region "
                f"{fm.region} ({buf.size} bytes)"
            )
    return buf


def read_fm(memory: Memory, fm: FeatureMap, what: str = "feature map") -> np.ndarray:
    """Read ``fm`` as an int64 (H, W, C) array."""
    addresses = element_addresses(fm)
    buf = _checked(memory, fm, addresses, what)
    esize = fm.dtype.size
    if esize == 1:
        raw = buf[addresses]
        values8: np.ndarray = (raw.view(np.int8) if fm.dtype.signed else raw).astype(np.int64)
        return values8
    gathered = buf[addresses[..., None] + np.arange(esize)]
    values = np.ascontiguousarray(gathered).view(_numpy_dtype(fm.dtype))[..., 0]
    return values.astype(np.int64)


def write_fm(memory: Memory, fm: FeatureMap, values: np.ndarray, what: str = "OFM") -> None:
    """Write an (H, W, C) integer array (already in the OFM's range) into ``fm``."""
    addresses = element_addresses(fm)
    buf = _checked(memory, fm, addresses, what)
    data = values.astype(_numpy_dtype(fm.dtype))
    esize = fm.dtype.size
    if esize == 1:
        buf[addresses] = data.view(np.uint8)
        return
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(*values.shape, esize)
    buf[addresses[..., None] + np.arange(esize)] = raw
