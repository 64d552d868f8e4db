"""nirc's built-in passes, registered through the same hook a plugin uses."""

from __future__ import annotations

from nirc.passes.approximate_gelu import ApproximateGeluPass
from nirc.passes.canonicalize_activations import CanonicalizeActivationsPass
from nirc.passes.collapse_reshapes import CollapseReshapesPass
from nirc.passes.compose_transposes import ComposeTransposesPass
from nirc.passes.decompose_batchnorm import DecomposeBatchnormPass
from nirc.passes.decompose_hard_sigmoid import DecomposeHardSigmoidPass
from nirc.passes.decompose_layernorm import DecomposeLayernormPass
from nirc.passes.decompose_pooling import DecomposePoolingPass
from nirc.passes.decompose_strided_conv import DecomposeStridedConvPass
from nirc.passes.eliminate_channel_shuffle import EliminateChannelShufflePass
from nirc.passes.eliminate_common_subexpressions import EliminateCommonSubexpressionsPass
from nirc.passes.eliminate_dead_code import EliminateDeadCodePass
from nirc.passes.eliminate_identity import EliminateIdentityPass
from nirc.passes.equalize_cross_layer import EqualizeCrossLayerPass
from nirc.passes.fold_constants import FoldConstantsPass
from nirc.passes.fold_pad import FoldPadPass
from nirc.passes.fuse_affine import FuseAffinePass
from nirc.passes.fuse_batchnorm import FuseBatchnormPass
from nirc.passes.fuse_matmul_add import FuseMatmulAddPass
from nirc.passes.legalize_channel_shuffle import LegalizeChannelShufflePass
from nirc.passes.legalize_global_pool import LegalizeGlobalPoolPass
from nirc.passes.legalize_l2_normalize import LegalizeL2NormalizePass
from nirc.passes.legalize_reduce_mean import LegalizeReduceMeanPass
from nirc.passes.legalize_reduce_sum import LegalizeReduceSumPass
from nirc.passes.legalize_resize import LegalizeResizePass
from nirc.passes.legalize_rsqrt import LegalizeRsqrtPass
from nirc.passes.merge_slices import MergeSlicesPass
from nirc.passes.pad_channels import PadChannelsPass
from nirc.passes.propagate_transposes import PropagateTransposesPass
from nirc.passes.prune_channels import PruneChannelsPass
from nirc.passes.schedule_memory import ScheduleMemoryPass
from nirc.passes.stage_inputs import StageInputsPass
from nirc.passes.substitute_blocks import SubstituteBlocksPass
from nirc.passes.tile_activations import TileActivationsPass

from nirc.hookspecs import hookimpl
from nirc.plugin import PassRegistry

BUILTIN_PASSES = (
    EliminateIdentityPass,
    FoldConstantsPass,
    EliminateCommonSubexpressionsPass,
    MergeSlicesPass,
    CanonicalizeActivationsPass,
    CollapseReshapesPass,
    ComposeTransposesPass,
    FuseMatmulAddPass,
    FuseBatchnormPass,
    DecomposeBatchnormPass,
    DecomposeHardSigmoidPass,
    FuseAffinePass,
    EliminateChannelShufflePass,
    FoldPadPass,
    EliminateDeadCodePass,
    PadChannelsPass,
    PruneChannelsPass,
    DecomposeLayernormPass,
    LegalizeL2NormalizePass,
    LegalizeRsqrtPass,
    PropagateTransposesPass,
    LegalizeChannelShufflePass,
    LegalizeGlobalPoolPass,
    DecomposePoolingPass,
    LegalizeReduceSumPass,
    LegalizeReduceMeanPass,
    LegalizeResizePass,
    ApproximateGeluPass,
    DecomposeStridedConvPass,
    EqualizeCrossLayerPass,
    SubstituteBlocksPass,
    StageInputsPass,
    TileActivationsPass,
    ScheduleMemoryPass,
)


@hookimpl
def nirc_register_passes(registry: PassRegistry) -> None:
    for pass_cls in BUILTIN_PASSES:
        registry.add_pass(pass_cls)
