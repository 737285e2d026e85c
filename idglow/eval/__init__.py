"""Benchmarks for identity fidelity vs aesthetic quality: manifests, metrics, the runner and its report.

Run one with ``idglow eval --benchmark fusion|age|PATH``; see ``idglow.eval.manifest`` for the manifest format.
Submodules load lazily, so ``import idglow.eval`` stays cheap.
"""

from __future__ import annotations

from idglow._lazy import lazy_getattr

_LAZY = {
    "BUILTIN_MANIFESTS": "idglow.eval.manifest",
    "EvalCase": "idglow.eval.manifest",
    "Manifest": "idglow.eval.manifest",
    "SubjectSpec": "idglow.eval.manifest",
    "SubjectResolver": "idglow.eval.manifest",
    "load_manifest": "idglow.eval.manifest",
    "parse_manifest": "idglow.eval.manifest",
    "MetricSummary": "idglow.eval.metrics",
    "age_errors": "idglow.eval.metrics",
    "bootstrap_ci": "idglow.eval.metrics",
    "identity_metrics": "idglow.eval.metrics",
    "pareto_front": "idglow.eval.metrics",
    "same_person_threshold": "idglow.eval.metrics",
    "summarize": "idglow.eval.metrics",
    "CONFIGS": "idglow.eval.vocabulary",
    "CONFIG_TITLES": "idglow.eval.vocabulary",
    "IMAGE_METRICS": "idglow.eval.vocabulary",
    "LOWER_IS_BETTER": "idglow.eval.vocabulary",
    "METRIC_TITLES": "idglow.eval.vocabulary",
    "EvalRunner": "idglow.eval.runner",
    "EvalSettings": "idglow.eval.runner",
    "config_window": "idglow.eval.vocabulary",
    "run_names": "idglow.eval.vocabulary",
    "run_title": "idglow.eval.vocabulary",
    "split_run": "idglow.eval.vocabulary",
    "difference_pairs": "idglow.eval.report",
    "schedule_of": "idglow.eval.runner",
    "EvalRun": "idglow.eval.runner",
    "report_of_run": "idglow.eval.report",
    "FAILURE_METRICS": "idglow.eval.report",
    "build_report": "idglow.eval.report",
    "render_markdown": "idglow.eval.report",
    "write_report": "idglow.eval.report",
    "pareto_plot": "idglow.eval.plot",
    "AestheticScorer": "idglow.eval.scorers",
    "ClipScorer": "idglow.eval.scorers",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr("idglow.eval", _LAZY, globals())
