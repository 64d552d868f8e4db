"""256-entry int8 tables for one-input functions, the way Vela builds its own LUTs.

A TOSA TABLE maps every int8 input code to an int8 output code, so any function
of one int8 tensor -- sigmoid, x * sigmoid(x), Mish, a requantisation -- costs the
same: one table, which Vela applies in the producing op's output stage. The entry
for code ``q`` is the real function at ``s_in * (q - zp_in)``, rounded half away
from zero at the output's parameters and saturated (``convert_to_lut8`` in Vela's
TFLite optimiser does the same for LOGISTIC/TANH/EXP...).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

RealFn = Callable[[np.ndarray], np.ndarray]


def table(fn: RealFn, in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> np.ndarray:
    """int8[256] with entry ``q + 128`` = quantised ``fn(in_scale * (q - in_zp))``."""
    codes = np.arange(-128, 128, dtype=np.float64)
    with np.errstate(all="ignore"):
        real = np.asarray(fn(np.float64(in_scale) * (codes - in_zp)), np.float64)
        scaled = out_zp + real / np.float64(out_scale)
    scaled = np.nan_to_num(scaled, nan=out_zp, posinf=127.0, neginf=-128.0)
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
    result: np.ndarray = np.clip(rounded, -128, 127).astype(np.int8)
    return result


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)))


def _erf(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.vectorize(math.erf, otypes=[np.float64])(x))


def _gelu(approximate: bool) -> RealFn:
    if approximate:
        c = math.sqrt(2.0 / math.pi)
        return lambda x: 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x**3)))
    return lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _leaky(alpha: float) -> RealFn:
    return lambda x: np.where(x >= 0, x, alpha * x)


def _clip(lo: float, hi: float) -> RealFn:
    return lambda x: np.clip(x, lo, hi)


#: TFLite builtin name -> real function, for the one-input ops that become a TABLE.
#: Parameterised ones (LEAKY_RELU alpha, GELU approximate) go through :func:`unary_function`.
UNARY: dict[str, RealFn] = {
    "LOGISTIC": _sigmoid,
    "TANH": np.tanh,
    "HARD_SWISH": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "RELU": _clip(0.0, math.inf),
    "RELU6": _clip(0.0, 6.0),
    "RELU_N1_TO_1": _clip(-1.0, 1.0),
    "RELU_0_TO_1": _clip(0.0, 1.0),
    "ELU": lambda x: np.where(x >= 0, x, np.expm1(x)),
    "EXP": np.exp,
    "LOG": np.log,
    "RSQRT": lambda x: 1.0 / np.sqrt(x),
    "QUANTIZE": lambda x: x,  # int8 -> int8 requantisation
}


def unary_function(op: str, *, alpha: float = 0.0, approximate: bool = False) -> RealFn | None:
    """The real function of TFLite builtin ``op`` applied to one tensor, or None if it is not one."""
    if op == "LEAKY_RELU":
        return _leaky(alpha)
    if op == "GELU":
        return _gelu(approximate)
    return UNARY.get(op)
