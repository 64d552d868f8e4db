"""Which TOSA graph a compiled artifact computes, recorded in the artifact itself.

Why: a TOSA-form ``MODEL_vela.tflite`` computes what ``MODEL_npu.tosa`` specifies (one TABLE
per activation chain), not what ``MODEL_int8.tflite`` does, so ``nirc validate VELA INT8``
must know to use the TOSA graph as the reference. A metadata entry (TFLite Micro ignores
unknown metadata) names the TOSA file and its SHA-256, so a stale or swapped file is caught.
This module needs no tosa-tools: ``nirc validate`` reads it for every artifact.
"""

from __future__ import annotations

import hashlib

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl

#: The metadata entry's name; its buffer holds ``<TOSA file name>\n<sha256 hex>``.
TOSA_SOURCE = b"nirc_tosa_source"


def load_model(data: bytes) -> tfl.ModelT:
    """The TFLite flatbuffer as the schema's object tree."""
    return tfl.ModelT.InitFromPackedBuf(bytearray(data), 0)


def pack_model(model: tfl.ModelT) -> bytes:
    """The object tree back to a TFLite flatbuffer."""
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def meta_name(meta: tfl.MetadataT) -> bytes:
    """A metadata entry's name as bytes (the object API gives bytes or str)."""
    return meta.name if isinstance(meta.name, bytes) else str(meta.name).encode()


def mark(data: bytes, tosa_name: str, tosa: bytes) -> bytes:
    """The compiled model with a :data:`TOSA_SOURCE` entry for the TOSA graph ``tosa`` saved as ``tosa_name``."""
    model = load_model(data)
    buffer = tfl.BufferT()
    buffer.data = np.frombuffer(f"{tosa_name}\n{digest(tosa)}".encode(), np.uint8)
    model.buffers.append(buffer)
    entry = tfl.MetadataT()
    entry.name, entry.buffer = TOSA_SOURCE, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if meta_name(m) != TOSA_SOURCE] + [entry]
    return pack_model(model)


def tosa_source(data: bytes) -> tuple[str, str] | None:
    """``(TOSA file name, sha256 hex)`` of a :func:`mark`-ed model, None for any other model (or non-model)."""
    try:
        model = load_model(data)
    except Exception:  # not a TFLite flatbuffer: the caller's own checks say so
        return None
    for entry in model.metadata or []:
        if meta_name(entry) == TOSA_SOURCE:
            raw = bytes(np.asarray(model.buffers[entry.buffer].data, np.uint8))
            name, _, hexdigest = raw.decode(errors="replace").partition("\n")
            return name, hexdigest
    return None


def digest(data: bytes) -> str:
    """SHA-256 hex of a TOSA file's bytes."""
    return hashlib.sha256(data).hexdigest()
