"""One error hierarchy, so the CLI can turn any user-triggerable failure into one line.

Every error carries a message that already names the offending file, op, pass or
target; the CLI prints ``nirc: error: <message>`` and exits with ``exit_code``.
"""

from __future__ import annotations


class NircError(Exception):
    """Base of every error nirc raises for a problem the user can fix."""

    exit_code: int = 1


class ModelLoadError(NircError):
    """The input is not a file, not ONNX, truncated, or fails the ONNX checker."""

    exit_code = 2


class DynamicShapeError(NircError):
    """A dimension stays symbolic after ``--input-shape`` and shape inference."""

    exit_code = 2


class UnsupportedOperatorError(NircError):
    """An op (or op domain) that nirc cannot lower."""

    exit_code = 3


class TargetError(NircError):
    """Unknown target name, or a model that cannot fit the target."""

    exit_code = 4


class PassError(NircError):
    """A pass raised, or a requested pass name is unknown."""

    exit_code = 5


class VerificationError(PassError):
    """An exact pass changed the model's function (``--verify``)."""

    exit_code = 6


class PluginError(NircError):
    """A plugin failed while registering, or registered a duplicate name."""

    exit_code = 7


class CalibrationError(NircError):
    """Calibration data of the wrong shape, dtype or kind."""

    exit_code = 2


class OutputError(NircError):
    """The output location cannot take the artifacts: a file where a directory goes, no write access."""

    exit_code = 2


class BackendError(NircError):
    """Emission or Vela compilation failed."""

    exit_code = 8


class NpuValidationError(NircError):
    """The compiled NPU artifact differs from its int8 TFLite without a known reason, or cannot be executed."""

    exit_code = 9
