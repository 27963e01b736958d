"""Evaluation on the paper's benchmarks, faithful to each protocol (docs/evaluation.md).

- :mod:`fin3r.eval.metrics` -- depth, point, pose and reconstruction metrics (pure functions);
- :mod:`fin3r.eval.alignment` -- MoGe's exact L1 alignments, least squares, median, Umeyama;
- :mod:`fin3r.eval.mono_scoring` -- MoGe's per-image scoring of every alignment variant;
- :mod:`fin3r.eval.moge_layout` -- MoGe's benchmark files and evaluation view;
- :mod:`fin3r.eval.monodepth` -- ``evaluate_monodepth`` (Table 1);
- :mod:`fin3r.eval.relpose` -- ``evaluate_relpose`` (Table 2, ScanNet-1500 pair lists);
- :mod:`fin3r.eval.scenes`, :mod:`fin3r.eval.mvdepth`, :mod:`fin3r.eval.pointmap` -- multi-view;
- :mod:`fin3r.eval.world_benchmarks` -- the synthetic world exported in those layouts;
- :mod:`fin3r.eval.report` -- Markdown tables and before/after comparisons.
"""
