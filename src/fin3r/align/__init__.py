"""Global alignment for the pairwise models (DUSt3R, MASt3R): pair graphs, pair predictions, the
confidence-weighted point-cloud optimiser with its spanning-tree initialisation, and the recovered
cameras (intrinsics, camera-to-world poses). See ``docs/alignment.md``."""

from fin3r.align.graphs import pair_graph
from fin3r.align.optimizer import OptimizerConfig
from fin3r.align.pairs import PairPredictions, predict_pairs
from fin3r.align.scene import (AlignConfig, AlignedScene, align_pair, align_pairs, align_views,
                               is_pairwise, scene_to_views_prediction)

__all__ = ["pair_graph", "OptimizerConfig", "PairPredictions", "predict_pairs", "AlignConfig",
           "AlignedScene", "align_pair", "align_pairs", "align_views", "is_pairwise", "scene_to_views_prediction"]
