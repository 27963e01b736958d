"""The embedded demo: Fin3R end to end on the synthetic world, on the CPU, with no downloads.

A thin application over library code: the world slices and data sets are
:mod:`fin3r.data.world_views`, the evaluation :mod:`fin3r.eval.world` and
:mod:`fin3r.eval.paired`; this package holds the configuration (:mod:`.config`), the runner that
fine-tunes the variants (:mod:`.runner`), the report (:mod:`.report`), the figure
(:mod:`.figure`) and :func:`run_demo` (:mod:`.run`), which is ``fin3r demo``.
"""

from fin3r.data.world_views import (
    LabelledViews,
    ReplayPairs,
    WorldViews,
    blur_depth,
    pair_batch,
    render_world_views,
    sample_pairs,
    teacher_labels,
)
from fin3r.demo.config import (
    ABLATION_VARIANTS,
    MAIN_VARIANTS,
    VARIANTS,
    DemoConfig,
    DemoWorldConfig,
    FinetuneConfig,
    default_base_path,
    load_base,
)
from fin3r.demo.report import build_report, report_markdown, summary_table
from fin3r.demo.run import run_demo
from fin3r.demo.runner import finetune_variant, measure_threads, run_variants, train_and_evaluate, variant_train_config
from fin3r.eval.paired import paired_auc_difference, paired_difference
from fin3r.eval.world import edge_mask, evaluate_world, floor_figures, mean_token_norms

__all__ = [
    "ABLATION_VARIANTS", "MAIN_VARIANTS", "VARIANTS", "DemoConfig", "DemoWorldConfig", "FinetuneConfig",
    "LabelledViews", "ReplayPairs", "WorldViews", "blur_depth", "build_report", "default_base_path", "edge_mask",
    "evaluate_world", "finetune_variant", "floor_figures", "load_base", "mean_token_norms", "measure_threads",
    "pair_batch", "paired_auc_difference", "paired_difference", "render_world_views", "report_markdown",
    "run_demo", "run_variants", "sample_pairs", "summary_table", "teacher_labels", "train_and_evaluate",
    "variant_train_config",
]
