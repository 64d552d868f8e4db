"""Functional model of the Ethos-U55/U65 NPU (see :mod:`.runner` for the entry points)."""
