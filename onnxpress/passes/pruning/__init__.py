"""Structured pruning on the ONNX graph: channel dependencies, importance, passes, reconstruction."""

from onnxpress.passes.pruning.dependency import (
    ChannelDependencies,
    ChannelDependencyAnalysis,
    Group,
    Member,
    Slot,
)
from onnxpress.passes.pruning.importance import SCORERS, register_scorer, score_classes
from onnxpress.passes.pruning.plan import PruningPlan, apply_pruning, replay_plan, select_classes
from onnxpress.passes.pruning.prune_channels import PrintPruningGroupsPass, PruneChannelsPass
from onnxpress.passes.pruning.prune_heads import PruneHeadsPass

__all__ = [
    "ChannelDependencies",
    "ChannelDependencyAnalysis",
    "Group",
    "Member",
    "PrintPruningGroupsPass",
    "PruneHeadsPass",
    "PruneChannelsPass",
    "PruningPlan",
    "SCORERS",
    "Slot",
    "apply_pruning",
    "register_scorer",
    "replay_plan",
    "score_classes",
    "select_classes",
]
