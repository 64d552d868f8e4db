"""What a compilation is asked to do, as one value shared by the CLI and the library.

Why one object: ``nirc optimize``'s flags and :func:`nirc.optimize`'s keywords
used to be two parallel lists of 18 names that drifted apart; an embedding
compiler also wants to build the request once, keep it, and reuse it across
models and threads. Both front ends fill these dataclasses, and the pipeline
reads only them. The module imports nothing heavy, so building options is cheap.

Adding an option: one field here (with its default and a line in the
docstring), one CLI flag that sets it, and the code that reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from nirc.target import Target

ChannelRounding = Literal["off", "pad", "prune"]
RangeMethodName = Literal["minmax", "percentile", "mse"]
DEFAULT_MAX_SNR_DROP_DB = 0.5
"""The accuracy guard's default tolerance: int8 SNR may drop this much on any output."""
DEFAULT_TARGET = "ethos-u65"
"""``ethos-u65-256`` on ``Ethos_U65_High_End`` + ``Dedicated_Sram_384KB``: the reference platform."""
DEFAULT_TARGET_TEXT = f"{DEFAULT_TARGET} = ethos-u65-256 on Ethos_U65_High_End with Dedicated_Sram_384KB"
TARGET_HELP = f"target name or alias (default: {DEFAULT_TARGET_TEXT}; list: nirc targets)"


@dataclass(frozen=True)
class CalibrationOptions:
    """How to obtain int8 activation ranges.

    Attributes:
        path: ``.npy``/``.npz``/image folder, or None for synthetic data (with a warning).
        mean, std: per-channel normalisation for image folders.
        method: ``minmax`` | ``percentile`` | ``mse``.
        count: at most this many samples are used.
        weights: per-channel weight ranges: ``max`` (max|w|), ``mse`` (clipped where that lowers
            the weights' squared quantization error) or ``adaround`` (max|w|, each weight rounded up
            or down to keep its layer's output on the calibration data: :mod:`nirc.quant.adaround`).
        bias_correction: fold the mean int8 weight-rounding error of each Conv/Gemm into its bias
            (:mod:`nirc.quant.bias_correction`); the float model is unchanged.
    """

    path: Path | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    method: RangeMethodName = "minmax"
    count: int = 16
    weights: Literal["max", "mse", "adaround"] = "max"
    bias_correction: bool = False


@dataclass(frozen=True)
class OptimizeOptions:
    """Everything :func:`nirc.optimize` and ``nirc optimize`` can be told, with the CLI's defaults.

    Attributes:
        target: target name or alias (see ``nirc targets``) or a :class:`~nirc.target.Target`.
        passes: an explicit pass list instead of the target's pipeline.
        skip: pass names dropped from the pipeline.
        no_hw_passes: drop the target's hardware passes (the baseline).
        channel_rounding: ``pad`` (exact, default), ``prune`` (lossy, opt-in) or ``off``.
        pass_options: pass name -> keyword options of its constructor.
        verify: check every exact pass against ONNX Runtime.
        dump_ir: write the ONNX after each pass into this directory (the only file output besides ``outdir``).
        input_shapes: input name -> dims, for inputs with dynamic dims.
        calibration: where int8 ranges come from.
        io_dtype: the TFLite model's input/output type.
        compile: run Vela (False stops after the int8 TFLite).
        validate_npu: execute Vela's output in the functional model (``sim``), on an FVP, or not.
        npu_samples: calibration inputs Vela's output is executed on (intermediates compared too).
        accuracy: the hardware passes keep a rewrite only if the int8 SNR of every output stays
            within ``max_snr_drop`` dB of the model without it (None: on with ``--calib`` data, off
            with synthetic inputs, where SNR says nothing about real inputs).
        max_snr_drop: the accuracy guard's tolerance in dB.
        layer_report: per-layer int8 SNR (where the int8 error enters) in the report.
        npu_format: what Vela reads: the int8 TFLite, or it lifted to TOSA 1.0 (``tosa``: one-input
            functions such as SiLU become one TABLE; ``auto``: both compiled, Vela's faster estimate kept).
        require_fit: raise :class:`~nirc.errors.TargetError` when the compiled model does not fit.
        activations_16: int16 activations (16x8 on the NPU) for these layers (ONNX tensor names of the
            optimized model) or ``("auto",)``: the worst layers by per-layer SNR drop until ``min_snr``
            (:mod:`nirc.quant.act16`). Opt-in; the report gives each layer's SNR gain and Vela cycles.
        min_snr: auto mode's accuracy target in dB on every output (giving it alone means auto).
        act16_max_cost: auto mode stops before Vela's latency grows by more than this percentage.
    """

    target: str | Target = DEFAULT_TARGET
    passes: Sequence[str] | None = None
    skip: Sequence[str] = ()
    no_hw_passes: bool = False
    channel_rounding: ChannelRounding = "pad"
    pass_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    verify: bool = False
    dump_ir: Path | None = None
    input_shapes: Mapping[str, Sequence[int]] | None = None
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    io_dtype: Literal["int8", "float32"] = "int8"
    compile: bool = True
    validate_npu: Literal["sim", "fvp", "none"] = "sim"
    npu_samples: int = 8
    npu_format: Literal["tflite", "tosa", "auto"] = "auto"
    accuracy: bool | None = None
    max_snr_drop: float = DEFAULT_MAX_SNR_DROP_DB
    layer_report: bool = True
    require_fit: bool = True
    activations_16: Sequence[str] = ()
    min_snr: float | None = None
    act16_max_cost: float | None = None


OPTION_NAMES = frozenset(f.name for f in fields(OptimizeOptions))
