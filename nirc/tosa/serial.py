"""What every part of the TOSA lift shares: tosa-tools' serializer, attributes, and the lift's error.

Its own module so the lift's op translators in separate modules (:mod:`nirc.tosa.softmax`)
need not import :mod:`nirc.tosa.lift`, which imports them.
"""

from __future__ import annotations

import warnings
from typing import Any

from nirc.errors import BackendError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import serializer.tosa_serializer as ts  # tosa-tools' pure-Python writer

__all__ = ["TosaUnsupportedError", "attr", "ts"]


class TosaUnsupportedError(BackendError):
    """The TFLite model holds an op (or a form of one) the TOSA lift does not translate.

    ``op_index`` is the TFLite operator that could not be lifted, when one op is to blame:
    :mod:`nirc.tosa.partition` leaves it and what it feeds to Vela's TFLite reader.
    """

    op_index: int | None = None


def attr(kind: str, *args: Any) -> Any:
    """A serializer attribute of ``kind`` (e.g. ``"Conv2dAttribute"``) built from ``args``."""
    built = ts.TosaSerializerAttribute()
    getattr(built, kind)(*args)
    return built
