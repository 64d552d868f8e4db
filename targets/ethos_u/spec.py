"""The Arm Ethos-U family as nirc targets.

Numbers come from Vela 5.2 (``architecture_features.py`` and ``vela.ini``) and the
Corstone reference platforms; the U65 default is the project's reference target
(Ethos_U65_High_End, Dedicated_Sram_384KB).
"""

from __future__ import annotations

from nirc.target import KIB, MIB, Target

# Canonicalisation first, then hardware-aware passes (``--no-hw-passes`` drops
# the latter, which gives the benchmark baseline: the same model through Vela alone).
CANONICAL_PIPELINE: tuple[str, ...] = (
    "fold-constants",  # makes shape inputs, Clip bounds and Pad amounts plain initializers
    "eliminate-identity",  # after fold-constants: Slice ends and Pad amounts from Shape chains are constants now
    "eliminate-common-subexpressions",
    "merge-slices",  # after CSE (a repeated slice would not tile the axis) and eliminate-identity (whole-range ones)
    "canonicalize-activations",
    "collapse-reshapes",
    "compose-transposes",
    "fuse-matmul-add",  # before fuse-batchnorm, so a BN after MatMul+Add folds into the Gemm
    "fuse-batchnorm",
    "decompose-batchnorm",  # BNs fuse-batchnorm could not fold
    "decompose-hard-sigmoid",  # after canonicalize-activations (HardSwish) and BN folding; fuse-affine folds it
    "fuse-affine",  # folds the Mul/Add of decompose-batchnorm where exact
    "eliminate-channel-shuffle",  # after BN folding, so a shuffle's producer is a conv again
    "fold-pad",
    "eliminate-dead-code",
    # NPU legalization: forms Vela places on the NPU (see targets/ethos_u/placement.py).
    "decompose-layernorm",
    "legalize-l2-normalize",  # F.normalize: MUL/MEAN/RSQRT on the NPU instead of a float REDUCE_L2 + DIV island
    "legalize-rsqrt",  # after decompose-layernorm's Pow(-0.5) and for hand-written x / Sqrt(v)
    "propagate-transposes",  # after the decompositions, so LayerNorms inside NHWC permutes are plain ops
    "legalize-channel-shuffle",  # what eliminate-channel-shuffle could not fold: one-hot convs or TRANSPOSE, by cost
    "legalize-global-pool",  # before decompose-pooling; an AVERAGE_POOL_2D costs Vela half a MEAN
    "decompose-pooling",
    "legalize-reduce-sum",  # after propagate-transposes (which moves ReduceSums through permutes as they are)
    "legalize-reduce-mean",  # after every pass that makes ReduceMeans (norms, sums): splits over-long axes
    "legalize-resize",
    "fuse-affine",  # again: folds LayerNorm affines, biases and layer scales into the new 1x1 convs
    "decompose-strided-conv",  # after fuse-affine: a Slice between conv and affine would block folding
    "equalize-cross-layer",  # on the final convs; with --calib only, kept only if int8 SNR rises (else inert)
)
HW_PIPELINE: tuple[str, ...] = (
    "substitute-blocks",  # rewrites a block only when Vela says its replacement is faster
    "pad-channels",  # costs each candidate with Vela: keeps only paddings that lower the estimate
    "schedule-memory",  # branch order (Vela follows swapped Add inputs) before tiling is costed on it
    "tile-activations",  # only where live activations exceed the arena; kept only if Vela's estimate drops
    "stage-inputs",  # last: staging first steered tiling to a worse plan (tinynet_a 11.81 vs 11.76 ms)
)

# ofm micro-block depth per MAC count (Vela ArchitectureConfig.ofm_ublock.depth).
_U55_OFM_DEPTH = {32: 4, 64: 8, 128: 8, 256: 8}


def _u55(macs: int) -> Target:
    return Target(
        name=f"ethos-u55-{macs}",
        macs=macs,
        brick_channels=16,
        ofm_block_depth=_U55_OFM_DEPTH[macs],
        accelerator_config=f"ethos-u55-{macs}",
        system_config="Ethos_U55_High_End_Embedded",
        memory_mode="Shared_Sram",
        arena_cache_bytes=None,
        platform_memory_bytes=32 * MIB,
        platform="Corstone-300",
        aliases=("ethos-u55",) if macs == 128 else (),
        default_pipeline=CANONICAL_PIPELINE + HW_PIPELINE,
        hw_passes=HW_PIPELINE,
        description=f"Arm Ethos-U55 with {macs} MACs/cycle, SRAM shared with the Cortex-M",
    )


def _u65(macs: int) -> Target:
    return Target(
        name=f"ethos-u65-{macs}",
        macs=macs,
        brick_channels=16,
        ofm_block_depth=8,
        accelerator_config=f"ethos-u65-{macs}",
        system_config="Ethos_U65_High_End",
        memory_mode="Dedicated_Sram_384KB",
        arena_cache_bytes=384 * KIB,
        platform_memory_bytes=32 * MIB,
        platform="Corstone-300",
        aliases=("ethos-u65",) if macs == 256 else (),
        default_pipeline=CANONICAL_PIPELINE + HW_PIPELINE,
        hw_passes=HW_PIPELINE,
        description=f"Arm Ethos-U65 with {macs} MACs/cycle, 384 KiB dedicated SRAM arena cache",
    )


def _u85(macs: int) -> Target:
    return Target(
        name=f"ethos-u85-{macs}",
        macs=macs,
        brick_channels=16,
        ofm_block_depth=16,
        accelerator_config=f"ethos-u85-{macs}",
        system_config="Ethos_U85_SYS_DRAM_Mid",
        memory_mode="Dedicated_Sram_384KB",
        arena_cache_bytes=384 * KIB,
        platform_memory_bytes=None,
        platform="Corstone-320",
        aliases=("ethos-u85",) if macs == 256 else (),
        default_pipeline=CANONICAL_PIPELINE + HW_PIPELINE,
        hw_passes=HW_PIPELINE,
        description=f"Arm Ethos-U85 with {macs} MACs/cycle, 384 KiB dedicated SRAM arena cache",
    )


ETHOS_U_TARGETS: tuple[Target, ...] = (
    *(_u55(m) for m in (32, 64, 128, 256)),
    *(_u65(m) for m in (256, 512)),
    *(_u85(m) for m in (128, 256, 512, 1024, 2048)),
)
