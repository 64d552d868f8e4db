"""Structured channel pruning of one channel space, with three importance criteria.

A *space* (:mod:`nirc.passes._channels`) is the set of tensors that must keep
one channel layout: a conv's output, the BN/ReLU/pool/depthwise ops after it,
and, through residual Adds, every tensor joined to it. Removing channel ``c``
from a space removes row ``c`` of every producer, the per-channel constants of
the ops inside, and column ``c`` of every reader, so the model stays well
formed; what is lost is what channel ``c`` contributed to the readers, which
:mod:`nirc.compress.reconstruct` then refits.

Criteria (higher score = keep):

* ``l2``: the norm of the channel's filters in all producers;
* ``geometric-median``: the channel's summed distance to the other filters (FPGM:
  filters near the median are the ones the rest can stand in for);
* ``activation``: data-driven, the channel's RMS activation at the readers'
  input on calibration data times the norm of the readers' weights on it, i.e.
  the size of what the readers would lose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from nirc.compress.linear import bias_of, weight_of
from nirc.passes._channels import ChannelSpaces, Layout, Space, apply_layouts
from nirc.passes.prune_channels import channel_scores, keep_count

Criterion = Literal["l2", "geometric-median", "activation"]
CRITERIA: tuple[Criterion, ...] = ("l2", "geometric-median", "activation")

__all__ = ["CRITERIA", "Criterion", "keep_count", "prunable_spaces", "prune_space", "reader_tensor", "scores"]


def prunable_spaces(spaces: ChannelSpaces, align: int) -> list[Space]:
    """Free spaces wider than one brick (narrower ones have nothing aligned to give up)."""
    return [s for s in spaces.free_spaces() if s.channels > align and not s.derived]


def reader_tensor(spaces: ChannelSpaces, space: Space) -> str | None:
    """The space's tensor its first reader consumes (post-activation), None when nothing reads it."""
    for name in space.absorbers:
        return str(spaces.nodes[name].inputs[0].name)
    return None


def _filter_rows(spaces: ChannelSpaces, space: Space) -> np.ndarray:
    parts = []
    for name in space.producers:
        node = spaces.nodes[name]
        weight = weight_of(node)
        parts.append(np.concatenate([weight.reshape(weight.shape[0], -1), bias_of(node, weight.shape[0])[:, None]], 1))
    return np.concatenate(parts, axis=1)


def _reader_norms(spaces: ChannelSpaces, space: Space) -> np.ndarray:
    total = np.zeros(space.channels)
    for name in space.absorbers:
        weight = weight_of(spaces.nodes[name])
        if weight.shape[1] != space.channels:  # a Flatten in between: columns are channel-major blocks
            weight = weight.reshape(weight.shape[0], space.channels, -1)
        total += np.sum(np.square(weight), axis=tuple(i for i in range(weight.ndim) if i != 1))
    return np.sqrt(total)


def scores(
    spaces: ChannelSpaces, space: Space, criterion: Criterion, activations: Mapping[str, np.ndarray] | None = None
) -> np.ndarray:
    """Importance of each of the space's channels (higher = keep)."""
    if criterion in ("l2", "geometric-median"):
        return np.asarray(channel_scores(_filter_rows(spaces, space), criterion))
    tensor = reader_tensor(spaces, space)
    if activations is None or tensor is None or tensor not in activations:
        raise ValueError(f"space '{space.key}': the activation criterion needs the readers' input activations")
    act = activations[tensor].astype(np.float64)
    rms = np.sqrt(np.mean(np.square(np.moveaxis(act, 1, 0).reshape(space.channels, -1)), axis=1))
    return np.asarray(rms * _reader_norms(spaces, space))


def prune_space(
    graph: gs.Graph,
    key: str,
    keep: int,
    criterion: Criterion = "l2",
    activations: Mapping[str, np.ndarray] | None = None,
) -> Layout:
    """Keep the ``keep`` best channels of space ``key`` in ``graph``; returns the kept original indices."""
    spaces = ChannelSpaces(graph)
    space = spaces.by_key().get(key)
    if space is None or not space.free:
        raise ValueError(f"channel space '{key}' cannot be pruned")
    if keep >= space.channels:
        return tuple(range(space.channels))
    best = np.argsort(-scores(spaces, space, criterion, activations), kind="stable")[:keep]
    kept: Layout = tuple(int(i) for i in sorted(best))
    apply_layouts(graph, spaces, {key: kept})
    return kept
