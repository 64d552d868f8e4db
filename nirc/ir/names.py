"""Fresh names for tensors and nodes: ONNX rejects duplicates that graphsurgeon would export silently."""

from __future__ import annotations


def fresh_name(used: set[str], base: str) -> str:
    """``base``, or ``base_N`` for the first N that is free; the result is added to ``used``."""
    name, index = base, 1
    while name in used:
        name = f"{base}_{index}"
        index += 1
    used.add(name)
    return name
