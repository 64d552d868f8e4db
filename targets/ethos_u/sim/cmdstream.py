"""Decode the Ethos-U55/U65 driver payload and register command stream into typed operations.

Why this exists: the command stream is the only thing the NPU executes, and it is
*stateful*: Vela's emitter drops every register write whose value is unchanged
since the previous operation, so no single ``NPU_OP_*`` command is meaningful on
its own.  This module replays the writes through a register file and snapshots,
at each operation command, exactly the registers the hardware would read.  The
result (a list of :class:`BlockOp` / :class:`DmaOp`) is what the functional model
executes and what :func:`describe` prints for a human.

Opcode numbers and bit-field layouts come from Vela's own register definitions
(``ethosu.vela.ethos_u55_regs``, U55 and U65 share them); the payload header format
(``COP1``/``COP2`` driver actions) from ``ethosu.vela.driver_actions``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum

from ethosu.vela.ethos_u55_regs.ethos_u55_regs import cmd0, cmd1

from nirc.errors import BackendError

_CMD1_FLAG = 0x4000
_CODE_MASK = 0x3FF

# Driver-action tags (ethosu.vela.driver_actions.DACommands).
_DA_CONFIG = 0x01
_DA_CMDSTREAM = 0x02
_DA_READAPB = 0x03
_DA_DUMPSHRAM = 0x04
_DA_NOP = 0x05
_FOURCCS = (b"COP1", b"COP2")


class CommandStreamError(BackendError):
    """The payload or command stream is malformed (truncated, unknown opcode, bad header)."""


@dataclass(frozen=True)
class Command:
    """One decoded register command: ``offset`` is its word index in the stream."""

    offset: int
    name: str
    code: int
    param: int
    data: int | None = None

    def __str__(self) -> str:
        if self.data is None:
            return f"{self.offset:5d}  {self.name:28s} {self.param:#06x}"
        return f"{self.offset:5d}  {self.name:28s} {self.param:#06x} {self.data:#010x}"


@dataclass(frozen=True)
class NpuConfig:
    """What the ``CONFIG`` driver action says about the NPU the stream was compiled for."""

    product: int  # 0 = Ethos-U55, 1 = Ethos-U65
    macs: int
    shram_kib: int
    cop_format: str

    @property
    def accelerator(self) -> str:
        """Vela's accelerator-config name, e.g. ``ethos-u65-256``."""
        return f"ethos-u{'65' if self.product == 1 else '55'}-{self.macs}"

    @property
    def cores(self) -> int:
        """MAC cores: Ethos-U65-512 is two 256-MAC cores, each with its own weight stream and SHRAM."""
        return 2 if self.product == 1 and self.macs == 512 else 1

    @property
    def shram_bytes_per_core(self) -> int:
        """The SHRAM one core addresses (LUTs sit in its last 2 KiB): CONFIG reports the sum over cores."""
        return max(self.shram_kib // self.cores, 16) * 1024


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def parse_payload(payload: bytes) -> tuple[NpuConfig, list[int]]:
    """Split the custom op's command-stream tensor into its config and register words.

    The tensor starts with driver actions (a FourCC, a CONFIG action with the NPU
    config and ID words, NOP padding) and one CMDSTREAM action whose 24-bit length
    counts the register-command words that follow.
    """
    if len(payload) % 4 or len(payload) < 8:
        raise CommandStreamError(f"command stream payload of {len(payload)} bytes is not a whole number of words")
    words = struct.unpack(f"<{len(payload) // 4}I", payload)
    fourcc = payload[:4]
    if fourcc not in _FOURCCS:
        raise CommandStreamError(f"payload does not start with a COP1/COP2 FourCC (got {fourcc!r})")
    if fourcc == b"COP2":
        return _parse_cop2(words)
    config: NpuConfig | None = None
    i = 1
    while i < len(words):
        tag = words[i]
        action = tag & 0xFF
        if action == _DA_CONFIG:
            if i + 2 >= len(words):
                raise CommandStreamError("truncated CONFIG driver action")
            cfg = words[i + 1]
            # config_r: macs_per_cc bits 0-3, cmd_stream_version 4-7, shram_size 8-15, product 28-31.
            config = NpuConfig(
                product=(cfg >> 28) & 0xF,
                macs=1 << (cfg & 0xF),
                shram_kib=(cfg >> 8) & 0xFF,
                cop_format=fourcc.decode(),
            )
            i += 3
        elif action in (_DA_NOP, _DA_READAPB) or action == _DA_DUMPSHRAM:
            i += 1
        elif action == _DA_CMDSTREAM:
            length = ((tag >> 16) & 0xFFFF) | (((tag >> 8) & 0xFF) << 16)
            start = i + 1
            if start + length > len(words):
                raise CommandStreamError(
                    f"CMDSTREAM action announces {length} words but only {len(words) - start} follow"
                )
            if config is None:
                raise CommandStreamError("CMDSTREAM driver action before any CONFIG action")
            return config, list(words[start : start + length])
        else:
            raise CommandStreamError(f"unknown driver action {action:#x} at word {i}")
    raise CommandStreamError("payload has no CMDSTREAM driver action")


_COP2_MAGIC = 0x4D554556  # "VEUM"


def _parse_cop2(words: tuple[int, ...]) -> tuple[NpuConfig, list[int]]:
    """COP2 (what Vela writes for ``--cop-format COP2`` / ``--separate-io-regions``), read from Regor's output.

    After the FourCC comes a chunk ``[kind, bytes, 0]``, then a chunk ``[kind, bytes]``
    whose body is a header (its size in bytes, the ``VEUM`` magic, a version, the size of
    the config block, the config and ID words, ...) followed by the register commands
    up to the end of the chunk.
    """
    if _COP2_MAGIC not in words:
        raise CommandStreamError("COP2 payload without its VEUM header")
    m = words.index(_COP2_MAGIC)
    if m < 6 or m + 3 >= len(words):
        raise CommandStreamError(f"COP2 header at word {m} is truncated")
    start, end = m + words[m - 1] // 4, (m - 1) + words[m - 2] // 4
    if not m + 4 <= start <= end <= len(words):
        raise CommandStreamError(f"COP2 header at word {m} announces commands {start}..{end} of {len(words)} words")
    cfg = words[m + 3]
    config = NpuConfig(product=(cfg >> 28) & 0xF, macs=1 << (cfg & 0xF), shram_kib=(cfg >> 8) & 0xFF, cop_format="COP2")
    return config, list(words[start:end])


_CMD0_NAMES = {c.value: c.name for c in cmd0}
_CMD1_NAMES = {c.value: c.name for c in cmd1}


def decode_commands(words: list[int]) -> list[Command]:
    """Decode register words into commands; raise on unknown opcodes or a truncated payload word."""
    commands: list[Command] = []
    i = 0
    while i < len(words):
        word = words[i]
        code = word & _CODE_MASK
        param = word >> 16
        mode = word & 0xC000
        if mode == _CMD1_FLAG:
            if i + 1 >= len(words):
                raise CommandStreamError(f"word {i}: command with payload is missing its data word")
            name = _CMD1_NAMES.get(code)
            if name is None:
                raise CommandStreamError(f"word {i}: unknown cmd1 opcode {code:#x}")
            commands.append(Command(i, name, code, param, words[i + 1]))
            i += 2
        elif mode == 0 and not word & 0x3C00:
            name = _CMD0_NAMES.get(code)
            if name is None:
                raise CommandStreamError(f"word {i}: unknown cmd0 opcode {code:#x}")
            commands.append(Command(i, name, code, param))
            i += 1
        else:
            raise CommandStreamError(f"word {i}: malformed command word {word:#010x}")
    return commands


class Layout(Enum):
    NHWC = 0
    NHCWB16 = 1


@dataclass(frozen=True)
class DataType:
    """Element type of a feature map (signedness and width in bits)."""

    signed: bool
    bits: int

    @property
    def size(self) -> int:
        return self.bits // 8

    @property
    def name(self) -> str:
        return f"{'int' if self.signed else 'uint'}{self.bits}"

    @property
    def min(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def max(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1


@dataclass(frozen=True)
class FeatureMap:
    """A feature map as the NPU addresses it: up to four tiles with their own base addresses.

    Tile 0 holds rows ``[0, height0)`` and columns ``[0, width0)``, tile 1 rows
    ``[0, height1)`` right of ``width0``, tiles 2 and 3 the rows below; coordinates
    inside a tile are relative to its top-left corner.  Vela uses tiles for rolling
    (cascaded) buffers and for concatenation in place.
    """

    region: int
    bases: tuple[int, int, int, int]
    height: int
    width: int
    depth: int
    height0: int
    height1: int
    width0: int
    stride_x: int
    stride_y: int
    stride_c: int
    zero_point: int
    dtype: DataType
    layout: Layout

    def describe(self) -> str:
        tiles = f"h0={self.height0} h1={self.height1} w0={self.width0}"
        bases = ",".join(f"{b:#x}" for b in self.bases)
        return (
            f"{self.height}x{self.width}x{self.depth} {self.dtype.name} {self.layout.name} region {self.region} "
            f"base [{bases}] {tiles} stride y/x/c {self.stride_y}/{self.stride_x}/{self.stride_c} "
            f"zp {self.zero_point}"
        )


@dataclass(frozen=True)
class Kernel:
    height: int
    width: int
    stride_y: int
    stride_x: int
    dilation_y: int
    dilation_x: int
    part_kernel_first: bool


@dataclass(frozen=True)
class Padding:
    top: int
    left: int
    bottom: int
    right: int


@dataclass(frozen=True)
class Activation:
    """NPU_SET_ACTIVATION: function (0 none, 3 tanh, 4 sigmoid, 16+n LUT n) and clamp range."""

    function: int
    clip_range: int
    minimum: int
    maximum: int

    @property
    def lut_index(self) -> int | None:
        return self.function - 16 if 16 <= self.function <= 23 else None


@dataclass(frozen=True)
class AddressRange:
    region: int
    address: int
    length: int


class OpKind(Enum):
    CONV = "CONV"
    DEPTHWISE = "DEPTHWISE"
    POOL = "POOL"
    ELEMENTWISE = "ELEMENTWISE"


POOL_MODES = {0: "MAX", 1: "AVERAGE", 2: "REDUCE_SUM"}
ELEMENTWISE_MODES = {
    0: "MUL",
    1: "ADD",
    2: "SUB",
    3: "MIN",
    4: "MAX",
    5: "LRELU",
    6: "ABS",
    7: "CLZ",
    8: "SHR",
    9: "SHL",
}
UNARY_ELEMENTWISE = frozenset({"LRELU", "ABS", "CLZ"})
ROUNDING = {0: "TFL", 1: "TRUNCATE", 2: "NATURAL"}


@dataclass(frozen=True)
class BlockOp:
    """One NPU_OP_CONV / DEPTHWISE / POOL / ELEMENTWISE with every register it reads.

    ``ifm`` height/width are derived, not read: the hardware has no IFM size
    register, it walks the OFM and maps each output position through kernel,
    stride and padding (``ifm = (ofm - 1) * stride + kernel - pad_before - pad_after``).
    """

    index: int
    offset: int
    kind: OpKind
    mode: str | None  # pooling / elementwise sub-operation
    ifm: FeatureMap
    ifm2: FeatureMap | None
    ifm2_scalar: int | None
    ofm: FeatureMap
    kernel: Kernel
    padding: Padding
    activation: Activation
    weights: AddressRange | None
    weights1: AddressRange | None
    scales: AddressRange | None
    scales1: AddressRange | None
    ofm_scale: tuple[int, int]  # (scale, shift) of NPU_SET_OFM_SCALE
    opa_scale: tuple[int, int]
    opb_scale: int
    ifm_scale_mode: int  # 0 = 16-bit, 1 = scale OPA 32-bit, 2 = scale OPB 32-bit
    global_scale: bool  # OFM_PRECISION bit 8: one scale from OFM_SCALE instead of the bias/scale stream
    rounding: str
    ifm_rounding: str
    reverse_operands: bool
    broadcast: tuple[bool, bool, bool]  # IFM2 broadcast in H, W, C
    ifm_upscale: int
    block: tuple[int, int, int]  # OFM block height, width, depth
    acc_format: int

    @property
    def name(self) -> str:
        return f"{self.kind.value}{'.' + self.mode if self.mode else ''}"


@dataclass(frozen=True)
class DmaOp:
    """One NPU_OP_DMA_START: a (possibly 2D/3D strided) copy between regions or into SHRAM."""

    index: int
    offset: int
    src: AddressRange
    dst: AddressRange
    src_internal: bool
    dst_internal: bool
    src_stride_mode: int
    dst_stride_mode: int
    channel_mode: int
    skip0: int
    skip1: int
    size0: int
    size1: int

    @property
    def name(self) -> str:
        return "DMA"


@dataclass
class CommandStream:
    """A decoded stream: its config, the raw commands and the operations they form."""

    config: NpuConfig
    commands: list[Command]
    ops: list[BlockOp | DmaOp] = field(default_factory=list)
    stopped: bool = False


class _Registers:
    """The register file as the command stream sees it: last value written per opcode."""

    def __init__(self) -> None:
        self.cmd0: dict[int, int] = {}
        self.cmd1: dict[int, tuple[int, int]] = {}

    def p(self, reg: cmd0, default: int | None = None) -> int:
        value = self.cmd0.get(reg.value, default)
        if value is None:
            raise CommandStreamError(f"{reg.name} is read before the command stream sets it")
        return value

    def d(self, reg: cmd1, default: int | None = None) -> int:
        value = self.cmd1.get(reg.value)
        if value is None:
            if default is None:
                raise CommandStreamError(f"{reg.name} is read before the command stream sets it")
            return default
        param, data = value
        return data | ((param & 0xFF) << 32)

    def pd(self, reg: cmd1) -> tuple[int, int]:
        value = self.cmd1.get(reg.value)
        if value is None:
            raise CommandStreamError(f"{reg.name} is read before the command stream sets it")
        return value


def _ifm_dtype(precision: int) -> DataType:
    bits = {0: 8, 1: 16, 2: 32}.get((precision >> 2) & 3)
    if bits is None:
        raise CommandStreamError(f"unsupported IFM precision field {precision:#x}")
    return DataType(bool(precision & 1), bits)


def _ofm_dtype(precision: int) -> DataType:
    bits = {0: 8, 1: 16, 2: 32}.get((precision >> 1) & 3)
    if bits is None:
        raise CommandStreamError(f"unsupported OFM precision field {precision:#x}")
    return DataType(bool(precision & 1), bits)


def _layout(precision: int) -> Layout:
    fmt = (precision >> 6) & 3
    if fmt > 1:
        raise CommandStreamError(f"unknown feature-map format {fmt}")
    return Layout(fmt)


def _kernel(r: _Registers) -> Kernel:
    stride = r.p(cmd0.NPU_SET_KERNEL_STRIDE)
    stride_x = 1 + ((stride & 1) | (((stride >> 6) & 0x7) << 1))
    stride_y = 1 + (((stride >> 1) & 1) | (((stride >> 9) & 0x7) << 1))
    dilation_x = 1 + ((stride >> 3) & 1)
    dilation_y = 1 + ((stride >> 4) & 1)
    width_m1 = r.p(cmd0.NPU_SET_KERNEL_WIDTH_M1)
    height_m1 = r.p(cmd0.NPU_SET_KERNEL_HEIGHT_M1)
    if width_m1 % dilation_x or height_m1 % dilation_y:
        raise CommandStreamError("kernel extent is not a multiple of the dilation")
    return Kernel(
        height=height_m1 // dilation_y + 1,
        width=width_m1 // dilation_x + 1,
        stride_y=stride_y,
        stride_x=stride_x,
        dilation_y=dilation_y,
        dilation_x=dilation_x,
        part_kernel_first=bool(stride & 4),
    )


def _ofm(r: _Registers) -> FeatureMap:
    prec = r.p(cmd0.NPU_SET_OFM_PRECISION)
    return FeatureMap(
        region=r.p(cmd0.NPU_SET_OFM_REGION) & 0x7,
        bases=(
            r.d(cmd1.NPU_SET_OFM_BASE0),
            r.d(cmd1.NPU_SET_OFM_BASE1, 0),
            r.d(cmd1.NPU_SET_OFM_BASE2, 0),
            r.d(cmd1.NPU_SET_OFM_BASE3, 0),
        ),
        height=r.p(cmd0.NPU_SET_OFM_HEIGHT_M1) + 1,
        width=r.p(cmd0.NPU_SET_OFM_WIDTH_M1) + 1,
        depth=r.p(cmd0.NPU_SET_OFM_DEPTH_M1) + 1,
        height0=r.p(cmd0.NPU_SET_OFM_HEIGHT0_M1) + 1,
        height1=r.p(cmd0.NPU_SET_OFM_HEIGHT1_M1) + 1,
        width0=r.p(cmd0.NPU_SET_OFM_WIDTH0_M1) + 1,
        stride_x=r.d(cmd1.NPU_SET_OFM_STRIDE_X),
        stride_y=r.d(cmd1.NPU_SET_OFM_STRIDE_Y),
        stride_c=r.d(cmd1.NPU_SET_OFM_STRIDE_C),
        zero_point=_signed(r.p(cmd0.NPU_SET_OFM_ZERO_POINT), 16),
        dtype=_ofm_dtype(prec),
        layout=_layout(prec),
    )


def _ifm(r: _Registers, height: int, width: int, depth: int) -> FeatureMap:
    prec = r.p(cmd0.NPU_SET_IFM_PRECISION)
    return FeatureMap(
        region=r.p(cmd0.NPU_SET_IFM_REGION) & 0x7,
        bases=(
            r.d(cmd1.NPU_SET_IFM_BASE0),
            r.d(cmd1.NPU_SET_IFM_BASE1, 0),
            r.d(cmd1.NPU_SET_IFM_BASE2, 0),
            r.d(cmd1.NPU_SET_IFM_BASE3, 0),
        ),
        height=height,
        width=width,
        depth=depth,
        height0=r.p(cmd0.NPU_SET_IFM_HEIGHT0_M1) + 1,
        height1=r.p(cmd0.NPU_SET_IFM_HEIGHT1_M1) + 1,
        width0=r.p(cmd0.NPU_SET_IFM_WIDTH0_M1) + 1,
        stride_x=r.d(cmd1.NPU_SET_IFM_STRIDE_X),
        stride_y=r.d(cmd1.NPU_SET_IFM_STRIDE_Y),
        stride_c=r.d(cmd1.NPU_SET_IFM_STRIDE_C),
        zero_point=_signed(r.p(cmd0.NPU_SET_IFM_ZERO_POINT), 16),
        dtype=_ifm_dtype(prec),
        layout=_layout(prec),
    )


def _ifm2(r: _Registers, height: int, width: int, depth: int) -> FeatureMap:
    prec = r.p(cmd0.NPU_SET_IFM2_PRECISION)
    return FeatureMap(
        region=r.p(cmd0.NPU_SET_IFM2_REGION) & 0x7,
        bases=(
            r.d(cmd1.NPU_SET_IFM2_BASE0),
            r.d(cmd1.NPU_SET_IFM2_BASE1, 0),
            r.d(cmd1.NPU_SET_IFM2_BASE2, 0),
            r.d(cmd1.NPU_SET_IFM2_BASE3, 0),
        ),
        height=height,
        width=width,
        depth=depth,
        height0=r.p(cmd0.NPU_SET_IFM2_HEIGHT0_M1) + 1,
        height1=r.p(cmd0.NPU_SET_IFM2_HEIGHT1_M1) + 1,
        width0=r.p(cmd0.NPU_SET_IFM2_WIDTH0_M1) + 1,
        stride_x=r.d(cmd1.NPU_SET_IFM2_STRIDE_X),
        stride_y=r.d(cmd1.NPU_SET_IFM2_STRIDE_Y),
        stride_c=r.d(cmd1.NPU_SET_IFM2_STRIDE_C),
        zero_point=_signed(r.p(cmd0.NPU_SET_IFM2_ZERO_POINT), 16),
        dtype=_ifm_dtype(prec),
        layout=_layout(prec),
    )


def _range(r: _Registers, region: cmd0, base: cmd1, length: cmd1) -> AddressRange | None:
    if base.value not in r.cmd1 or length.value not in r.cmd1:
        return None
    return AddressRange(r.p(region) & 0x7, r.d(base), r.pd(length)[1])


_ACTIVATION_FUNCTIONS = frozenset({0, 3, 4, *range(16, 24)})
"""NPU_SET_ACTIVATION functions: none, tanh, sigmoid, LUT 0-7; every other value is reserved."""


def _check_reserved(activation: Activation, ofm_prec: int, ifm_prec: int, upscale: int) -> None:
    """Reject reserved register values instead of reading them as some default.

    Why: a corrupted or hand-edited stream must fail validation, not execute as the
    nearest valid stream (a reserved rounding mode once ran as TFL rounding).
    """
    if activation.function not in _ACTIVATION_FUNCTIONS:
        raise CommandStreamError(f"reserved activation function {activation.function} in NPU_SET_ACTIVATION")
    for name, prec in (("OFM", ofm_prec), ("IFM", ifm_prec)):
        if (prec >> 14) & 3 not in ROUNDING:
            raise CommandStreamError(f"reserved rounding mode 3 in NPU_SET_{name}_PRECISION")
    if upscale == 3:
        raise CommandStreamError("reserved IFM upscale mode 3 in NPU_SET_IFM_UPSCALE")


def _block_op(r: _Registers, index: int, command: Command) -> BlockOp:
    kind = {
        cmd0.NPU_OP_CONV.value: OpKind.CONV,
        cmd0.NPU_OP_DEPTHWISE.value: OpKind.DEPTHWISE,
        cmd0.NPU_OP_POOL.value: OpKind.POOL,
        cmd0.NPU_OP_ELEMENTWISE.value: OpKind.ELEMENTWISE,
    }[command.code]
    mode: str | None = None
    if kind is OpKind.POOL:
        mode = POOL_MODES.get(command.param)
    elif kind is OpKind.ELEMENTWISE:
        mode = ELEMENTWISE_MODES.get(command.param)
    if kind in (OpKind.POOL, OpKind.ELEMENTWISE) and mode is None:
        raise CommandStreamError(f"word {command.offset}: unknown {kind.value} mode {command.param}")
    ofm = _ofm(r)
    if kind is OpKind.ELEMENTWISE:
        kernel = Kernel(1, 1, 1, 1, 1, 1, False)
        padding = Padding(0, 0, 0, 0)
    else:
        kernel = _kernel(r)
        padding = Padding(
            r.p(cmd0.NPU_SET_IFM_PAD_TOP),
            r.p(cmd0.NPU_SET_IFM_PAD_LEFT),
            r.p(cmd0.NPU_SET_IFM_PAD_BOTTOM),
            r.p(cmd0.NPU_SET_IFM_PAD_RIGHT),
        )
    upscale = r.p(cmd0.NPU_SET_IFM_UPSCALE, 0) & 3
    if kind is OpKind.ELEMENTWISE:
        ifm_h, ifm_w = ofm.height, ofm.width
    else:
        ext_h = (kernel.height - 1) * kernel.dilation_y + 1
        ext_w = (kernel.width - 1) * kernel.dilation_x + 1
        ifm_h = (ofm.height - 1) * kernel.stride_y + ext_h - padding.top - padding.bottom
        ifm_w = (ofm.width - 1) * kernel.stride_x + ext_w - padding.left - padding.right
        if upscale:
            ifm_h, ifm_w = (ifm_h + 1) // 2, (ifm_w + 1) // 2
    ifm_depth = r.p(cmd0.NPU_SET_IFM_DEPTH_M1) + 1
    ifm = _ifm(r, ifm_h, ifm_w, ifm_depth)
    ifm_prec = r.p(cmd0.NPU_SET_IFM_PRECISION)
    ofm_prec = r.p(cmd0.NPU_SET_OFM_PRECISION)
    act = r.p(cmd0.NPU_SET_ACTIVATION, 0)
    activation = Activation(
        function=act & 0xFFF,
        clip_range=(act >> 12) & 0xF,
        minimum=_signed(r.p(cmd0.NPU_SET_ACTIVATION_MIN), 16),
        maximum=_signed(r.p(cmd0.NPU_SET_ACTIVATION_MAX), 16),
    )
    ifm2: FeatureMap | None = None
    scalar: int | None = None
    reverse = False
    broadcast = (False, False, False)
    if kind is OpKind.ELEMENTWISE and mode not in UNARY_ELEMENTWISE:
        bc = r.p(cmd0.NPU_SET_IFM2_BROADCAST, 0)
        reverse = bool(bc & 0x40)
        broadcast = (bool(bc & 1), bool(bc & 2), bool(bc & 4))
        if bc & 0x80:
            scalar = r.p(cmd0.NPU_SET_IFM2_SCALAR)
            prec2 = r.p(cmd0.NPU_SET_IFM2_PRECISION)
            dtype2 = _ifm_dtype(prec2)
            scalar = _signed(scalar, 16) if dtype2.signed else scalar & 0xFFFF
            ifm2 = FeatureMap(
                -1, (0, 0, 0, 0), 1, 1, 1, 1, 1, 1, 0, 0, 0,
                _signed(r.p(cmd0.NPU_SET_IFM2_ZERO_POINT), 16), dtype2, Layout.NHWC,
            )  # fmt: skip
        else:
            ifm2 = _ifm2(
                r,
                1 if broadcast[0] else ofm.height,
                1 if broadcast[1] else ofm.width,
                1 if broadcast[2] else ifm_depth,
            )
    weights = weights1 = scales = scales1 = None
    if kind in (OpKind.CONV, OpKind.DEPTHWISE):
        weights = _range(r, cmd0.NPU_SET_WEIGHT_REGION, cmd1.NPU_SET_WEIGHT_BASE, cmd1.NPU_SET_WEIGHT_LENGTH)
        weights1 = _range(r, cmd0.NPU_SET_WEIGHT_REGION, cmd1.NPU_SET_WEIGHT1_BASE, cmd1.NPU_SET_WEIGHT1_LENGTH)
    _check_reserved(activation, ofm_prec, ifm_prec, upscale)
    global_scale = bool(ofm_prec & 0x100)
    if not global_scale and kind is not OpKind.ELEMENTWISE and not (kind is OpKind.POOL and mode == "MAX"):
        scales = _range(r, cmd0.NPU_SET_SCALE_REGION, cmd1.NPU_SET_SCALE_BASE, cmd1.NPU_SET_SCALE_LENGTH)
        scales1 = _range(r, cmd0.NPU_SET_SCALE_REGION, cmd1.NPU_SET_SCALE1_BASE, cmd1.NPU_SET_SCALE1_LENGTH)
    ofm_scale = r.cmd1.get(cmd1.NPU_SET_OFM_SCALE.value, (0, 1))
    opa = r.cmd1.get(cmd1.NPU_SET_OPA_SCALE.value, (0, 1))
    opb = r.cmd1.get(cmd1.NPU_SET_OPB_SCALE.value, (0, 1))
    return BlockOp(
        index=index,
        offset=command.offset,
        kind=kind,
        mode=mode,
        ifm=ifm,
        ifm2=ifm2,
        ifm2_scalar=scalar,
        ofm=ofm,
        kernel=kernel,
        padding=padding,
        activation=activation,
        weights=weights,
        weights1=weights1,
        scales=scales,
        scales1=scales1,
        ofm_scale=(ofm_scale[1], ofm_scale[0] & 0x3F),
        opa_scale=(opa[1], opa[0] & 0x3F),
        opb_scale=opb[1],
        ifm_scale_mode=(ifm_prec >> 8) & 3,
        global_scale=global_scale,
        rounding=ROUNDING[(ofm_prec >> 14) & 3],
        ifm_rounding=ROUNDING[(ifm_prec >> 14) & 3],
        reverse_operands=reverse,
        broadcast=broadcast,
        ifm_upscale=upscale,
        block=(
            r.p(cmd0.NPU_SET_OFM_BLK_HEIGHT_M1, 0) + 1,
            r.p(cmd0.NPU_SET_OFM_BLK_WIDTH_M1, 0) + 1,
            r.p(cmd0.NPU_SET_OFM_BLK_DEPTH_M1, 0) + 1,
        ),
        acc_format=r.p(cmd0.NPU_SET_ACC_FORMAT, 0),
    )


def _dma_op(r: _Registers, index: int, command: Command) -> DmaOp:
    src_region = r.p(cmd0.NPU_SET_DMA0_SRC_REGION)
    dst_region = r.p(cmd0.NPU_SET_DMA0_DST_REGION)
    length = r.d(cmd1.NPU_SET_DMA0_LEN)
    return DmaOp(
        index=index,
        offset=command.offset,
        src=AddressRange(src_region & 0xFF, r.d(cmd1.NPU_SET_DMA0_SRC), length),
        dst=AddressRange(dst_region & 0xFF, r.d(cmd1.NPU_SET_DMA0_DST), length),
        src_internal=bool(src_region & 0x100),
        dst_internal=bool(dst_region & 0x100),
        src_stride_mode=(src_region >> 9) & 3,
        dst_stride_mode=(dst_region >> 9) & 3,
        channel_mode=command.param,
        skip0=r.d(cmd1.NPU_SET_DMA0_SKIP0, 0),
        skip1=r.d(cmd1.NPU_SET_DMA0_SKIP1, 0),
        size0=r.p(cmd0.NPU_SET_DMA0_SIZE0, 0),
        size1=r.p(cmd0.NPU_SET_DMA0_SIZE1, 0),
    )


_BLOCK_OPS = frozenset(
    c.value for c in (cmd0.NPU_OP_CONV, cmd0.NPU_OP_DEPTHWISE, cmd0.NPU_OP_POOL, cmd0.NPU_OP_ELEMENTWISE)
)
_NO_STATE_OPS = frozenset(
    c.value for c in (cmd0.NPU_OP_IRQ, cmd0.NPU_OP_DMA_WAIT, cmd0.NPU_OP_KERNEL_WAIT, cmd0.NPU_OP_PMU_MASK)
)


def decode(payload: bytes) -> CommandStream:
    """Decode a custom op's command-stream tensor into a :class:`CommandStream` with its operations."""
    config, words = parse_payload(payload)
    if config.product not in (0, 1):
        raise CommandStreamError(
            f"command stream for NPU product {config.product} (not Ethos-U55/U65, e.g. Ethos-U85): not modelled"
        )
    commands = decode_commands(words)
    stream = CommandStream(config, commands)
    regs = _Registers()
    for command in commands:
        if command.data is not None:
            regs.cmd1[command.code] = (command.param, command.data)
        elif command.code in _BLOCK_OPS or command.code == cmd0.NPU_OP_DMA_START.value:
            build = _dma_op if command.code == cmd0.NPU_OP_DMA_START.value else _block_op
            try:
                stream.ops.append(build(regs, len(stream.ops), command))
            except (CommandStreamError, ValueError, KeyError, IndexError) as exc:
                # Register values no valid stream holds (an enum out of range, a field
                # that indexes nothing): one line naming the command word, not a traceback.
                raise CommandStreamError(f"word {command.offset} ({command.name}): {exc}") from exc
        elif command.code == cmd0.NPU_OP_STOP.value:
            stream.stopped = True
            break
        elif command.code in _NO_STATE_OPS:
            continue
        else:
            regs.cmd0[command.code] = command.param
    return stream


def describe_op(op: BlockOp | DmaOp) -> str:
    """A few indented lines per operation, in the spirit of Vela's ``--verbose-high-level-command-stream``."""
    if isinstance(op, DmaOp):
        src = "SHRAM" if op.src_internal else f"region {op.src.region}"
        dst = "SHRAM" if op.dst_internal else f"region {op.dst.region}"
        return (
            f"{op.index:4d} DMA  {src}+{op.src.address:#x} -> {dst}+{op.dst.address:#x} "
            f"len {op.src.length} (word {op.offset})"
        )
    lines = [f"{op.index:4d} {op.name}  (word {op.offset})"]
    lines.append(f"       IFM  {op.ifm.describe()}")
    if op.ifm2_scalar is not None and op.ifm2 is not None:
        lines.append(f"       IFM2 scalar {op.ifm2_scalar} zp {op.ifm2.zero_point}")
    elif op.ifm2 is not None:
        lines.append(f"       IFM2 {op.ifm2.describe()}")
    lines.append(f"       OFM  {op.ofm.describe()}")
    if op.kind is not OpKind.ELEMENTWISE:
        k = op.kernel
        order = "part-kernel-first" if k.part_kernel_first else "depth-first"
        lines.append(
            f"       kernel {k.height}x{k.width} stride {k.stride_y}x{k.stride_x} dilation "
            f"{k.dilation_y}x{k.dilation_x} {order}; pad t{op.padding.top} l{op.padding.left} "
            f"b{op.padding.bottom} r{op.padding.right}"
        )
    if op.weights is not None:
        lines.append(f"       weights region {op.weights.region}+{op.weights.address:#x} len {op.weights.length}")
    if op.scales is not None:
        lines.append(f"       scales  region {op.scales.region}+{op.scales.address:#x} len {op.scales.length}")
    if op.global_scale or op.kind is OpKind.ELEMENTWISE:
        lines.append(f"       ofm scale {op.ofm_scale[0]} >> {op.ofm_scale[1]}")
    if op.kind is OpKind.ELEMENTWISE and op.mode in ("ADD", "SUB"):
        lines.append(
            f"       opa scale {op.opa_scale[0]} >> {op.opa_scale[1]}, opb scale {op.opb_scale}, "
            f"scale mode {op.ifm_scale_mode}"
        )
    act = op.activation
    lut = f" LUT {act.lut_index}" if act.lut_index is not None else ""
    lines.append(
        f"       activation {act.function}{lut} clamp [{act.minimum}, {act.maximum}] rounding {op.rounding}"
        f" block {op.block[0]}x{op.block[1]}x{op.block[2]}"
    )
    return "\n".join(lines)


def describe(stream: CommandStream) -> str:
    """Human-readable dump of a decoded stream: header, then one block per operation."""
    cfg = stream.config
    head = (
        f"{cfg.cop_format} {cfg.accelerator} ({cfg.macs} MACs/cc, SHRAM {cfg.shram_kib} KiB): "
        f"{len(stream.commands)} commands, {len(stream.ops)} operations"
    )
    return "\n".join([head, *(describe_op(op) for op in stream.ops)])
