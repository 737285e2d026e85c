"""Evaluation report: per-configuration summaries with bootstrap intervals, paired differences, the Pareto
front and, with bad cases, the shaped − plain prompt differences; written as ``report.json`` (everything),
``report.md`` (tables) and ``pareto.png`` (the plot)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from idglow.eval.metrics import pareto_front, summarize
from idglow.eval.vocabulary import (
    COORDINATE_MARK,
    IMAGE_METRICS,
    LOWER_IS_BETTER,
    METRIC_TITLES,
    WINDOWED_CONFIGS,
    config_window,
    run_title,
)

PARETO_X = "face_sim_mean"
PARETO_Y_CHOICES = ("aesthetic", "clip_score")
DIFFERENCES = (("idglow", "base"), ("idglow", "always_on"), ("always_on", "base"), ("linear_decay", "idglow"),
               ("linear_decay", "always_on"))
#: The metric that measures each failure type of the bad-case taxonomy (None: no metric measures it).
FAILURE_METRICS: dict[str, str | None] = {
    "attribute_leakage": "face_sim_worst",
    "identity_swap": "swap_rate",
    "missing_person": "missing_rate",
    "duplicate_face": "duplicate_rate",
    "wrong_age": "age_error",
    "mini_adult": "age_error",
    "texture_mismatch": None,
    "artifact": None,
}
FAILURE_METRIC_NOTES = {
    "attribute_leakage": "a proxy: attributes that leak between people pull the worst person's face away",
    "identity_swap": "a person whose place (the prompt's left-to-right order) holds another member's face",
    "wrong_age": "age benchmark only",
    "mini_adult": "age benchmark only; the estimated age, not the body's proportions",
    "texture_mismatch": "no metric measures texture consistency",
    "artifact": "no metric measures anatomy artifacts",
}
SHAPED_NOTE = (
    "Shaped − plain: each case's prompt composed with the bad cases retrieved for it minus the same case's plain "
    "prompt, on the same seeds and configurations (CLIP scores both against the plain prompt). It measures the "
    "effect of the prompt only with a generator whose text encoders read text (real FLUX weights); with the tiny "
    "demo model (random text encoders) the difference means nothing."
)


def _paired_summary(pairs, metric: str, num_resamples: int, confidence: float, seed: int):
    """Mean of a − b over the (a, b) record pairs that both have ``metric``, with its bootstrap interval."""
    diffs = [ra[metric] - rb[metric] for ra, rb in pairs if ra.get(metric) is not None and rb.get(metric) is not None]
    summary = summarize(diffs, num_resamples, confidence, seed)
    return None if summary is None else summary.to_dict()


def _paired_difference(rows, metric: str, a: str, b: str, num_resamples: int, confidence: float, seed: int):
    pairs = [(row["results"][a], row["results"][b]) for row in rows if a in row["results"] and b in row["results"]]
    return _paired_summary(pairs, metric, num_resamples, confidence, seed)


def pareto_axes(skipped: dict[str, str]) -> tuple[str, str | None]:
    """x: identity fidelity; y: the aesthetic score, else the CLIP score, else None (both skipped)."""
    y = next((m for m in PARETO_Y_CHOICES if m not in skipped), None)
    return PARETO_X, y


_Rows = Sequence[dict[str, Any]]


def _summaries(case_rows: _Rows, settings, skipped: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per configuration and metric: the mean over cases with its bootstrap interval, or why it is skipped."""
    r, conf, seed = settings.num_resamples, settings.confidence, settings.bootstrap_seed
    summary: dict[str, dict[str, Any]] = {}
    for config in settings.runs:
        summary[config] = {}
        for metric in IMAGE_METRICS:
            if metric in skipped:
                summary[config][metric] = {"skipped": skipped[metric]}
                continue
            values = [row["results"][config][metric] for row in case_rows]
            s = summarize(values, r, conf, seed)
            summary[config][metric] = s.to_dict() if s else {"skipped": "no case has a value"}
    return summary


def _fidelity_summary(case_rows: _Rows, settings, skipped: dict[str, str]) -> dict[str, Any]:
    """The prompt fidelity's mean over cases with its bootstrap interval (or why it is skipped)."""
    if "prompt_fidelity" in skipped:
        return {"skipped": skipped["prompt_fidelity"]}
    values = [row["prompt_fidelity"] for row in case_rows]
    s = summarize(values, settings.num_resamples, settings.confidence, settings.bootstrap_seed)
    return s.to_dict() if s else {"skipped": "no case has a value"}


def difference_pairs(settings) -> list[tuple[str, str]]:
    """The (a, b) runs whose paired difference a − b the report gives: the pairs of DIFFERENCES that were run
    and, with several window coordinates, each windowed configuration in every coordinate against the same
    configuration in the first one (and each of the pairs of DIFFERENCES per coordinate)."""
    coordinates = settings.window_coordinates
    if len(coordinates) <= 1:
        return [(a, b) for a, b in DIFFERENCES if a in settings.configs and b in settings.configs]

    def named(config: str, coordinate: str) -> str:
        return f"{config}{COORDINATE_MARK}{coordinate}" if config in WINDOWED_CONFIGS else config

    pairs = [(named(c, k), named(c, coordinates[0])) for c in settings.configs if c in WINDOWED_CONFIGS
             for k in coordinates[1:]]
    for a, b in DIFFERENCES:
        if a in settings.configs and b in settings.configs:
            pairs += list(dict.fromkeys((named(a, k), named(b, k)) for k in coordinates))
    return pairs


def _differences(case_rows: _Rows, settings, skipped: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Paired differences between the runs of :func:`difference_pairs`, per metric."""
    r, conf, seed = settings.num_resamples, settings.confidence, settings.bootstrap_seed
    return {
        f"{a}-{b}": {
            m: _paired_difference(case_rows, m, a, b, r, conf, seed) for m in IMAGE_METRICS if m not in skipped
        }
        for a, b in difference_pairs(settings)
    }


def _shaped_differences(case_rows: _Rows, settings, skipped: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per configuration and metric: shaped − plain over the cases with a shaped run."""
    r, conf, seed = settings.num_resamples, settings.confidence, settings.bootstrap_seed
    compared = [row for row in case_rows if row["shaped"]["results"]]
    out = {}
    for config in settings.runs:
        pairs = [(row["shaped"]["results"][config], row["results"][config]) for row in compared]
        out[config] = {m: _paired_summary(pairs, m, r, conf, seed) for m in IMAGE_METRICS if m not in skipped}
    return out


def _failure_metrics(case_rows: _Rows, failure_types: Sequence[str], differences: dict[str, dict[str, Any]],
                     skipped: dict[str, str]) -> list[dict[str, Any]]:
    """One entry per failure type in the bad cases: the metric that measures it, how many compared cases it
    shaped, and shaped − plain of that metric per configuration (or why there is none)."""
    table = []
    for failure in failure_types:
        metric = FAILURE_METRICS[failure]
        entry: dict[str, Any] = {
            "failure_type": failure, "metric": metric, "note": FAILURE_METRIC_NOTES.get(failure),
            "cases_shaped": sum(failure in row["shaped"]["failure_types"] for row in case_rows
                                if row["shaped"]["results"]),
        }
        if metric is None:
            entry["skipped"] = f"none available: {FAILURE_METRIC_NOTES[failure]}"
        elif metric in skipped:
            entry["skipped"] = skipped[metric]
        else:
            entry["differences"] = {config: diffs[metric] for config, diffs in differences.items()}
        table.append(entry)
    return table


def _badcase_section(case_rows: _Rows, settings, skipped: dict[str, str],
                     badcases: dict[str, Any] | None) -> dict[str, Any] | None:
    """The shaped-vs-plain comparison: the bad cases given, the cases compared and skipped (with the reason),
    shaped − plain per configuration and metric, and the failure → metric table."""
    if badcases is None:
        return None
    differences = _shaped_differences(case_rows, settings, skipped)
    return {
        **badcases,
        "max_badcases": settings.max_badcases,
        "note": SHAPED_NOTE,
        "cases_compared": sum(bool(row["shaped"]["results"]) for row in case_rows),
        "skipped_cases": {row["id"]: row["shaped"]["skipped"] for row in case_rows if row["shaped"]["skipped"]},
        "differences": differences,
        "failure_metrics": _failure_metrics(case_rows, badcases["failure_types"], differences, skipped),
    }


def _by_num_subjects(
    case_rows: _Rows, configs: Sequence[str], skipped: dict[str, str]
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per configuration and group size: each metric's mean over the cases of that size (None: no value)."""
    by_size: dict[str, dict[str, dict[str, float | None]]] = {}
    for config in configs:
        by_size[config] = {}
        for n in sorted({row["num_subjects"] for row in case_rows}):
            rows = [row for row in case_rows if row["num_subjects"] == n]
            by_size[config][str(n)] = {}
            for m in IMAGE_METRICS:
                if m in skipped:
                    continue
                vals = [row["results"][config][m] for row in rows if row["results"][config][m] is not None]
                by_size[config][str(n)][m] = sum(vals) / len(vals) if vals else None
    return by_size


def _pareto(summary: dict[str, dict[str, Any]], skipped: dict[str, str]) -> dict[str, Any]:
    """The Pareto axes, every configuration's point (mean x, mean y) and the non-dominated ones."""
    x_metric, y_metric = pareto_axes(skipped)
    points = {}
    for config, metrics in summary.items():
        x = metrics[x_metric].get("mean")
        y = metrics[y_metric].get("mean") if y_metric else None
        points[config] = (x, y)
    valid = {c: p for c, p in points.items() if p[0] is not None and (y_metric is None or p[1] is not None)}
    front = pareto_front(valid) if valid else []
    return {"x": x_metric, "y": y_metric, "points": {c: list(p) for c, p in points.items()}, "front": front}


def _schedules(case_rows: _Rows, runs: Sequence[str]) -> dict[str, Any]:
    """Per run, the identity schedule of its first case (window coordinate, σ windows the gate read, σ of the
    steps with identity; the same for every case of a benchmark, whose images share steps and size), None for
    records made before schedules were recorded."""
    return {run: next((row["results"][run].get("schedule") for row in case_rows
                       if row["results"][run].get("schedule")), None) for run in runs}


def build_report(manifest, case_rows: Sequence[dict[str, Any]], settings, *, model_info: dict[str, Any],
                 task: str, skipped: dict[str, str], stats: dict[str, int] | None = None,
                 analyzer: dict[str, Any] | None = None, badcases: dict[str, Any] | None = None,
                 processes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict; summaries are means over cases (each case's value is the mean over its
    images), with percentile-bootstrap intervals over cases. ``badcases`` (source, num_badcases, failure_types),
    given when the cases were also run with bad-case-shaped prompts, adds the ``badcases`` section (else None).
    ``processes``: each process's rank and the ids of the cases it ran (default: one process, every case)."""
    summary = _summaries(case_rows, settings, skipped)
    windows = {}
    for config in settings.runs:
        w = config_window(config, task, settings)
        windows[config] = None if w is None else [w.sigma_lo, w.sigma_hi]
    return {
        "benchmark": {"name": manifest.name, "task": task, "source": manifest.source,
                      "description": manifest.description, "num_cases": len(case_rows)},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": dict(model_info),
        "analyzer": analyzer or {},
        "settings": settings.to_dict(),
        "configs": list(settings.runs),
        "config_titles": {c: run_title(c) for c in settings.runs},
        "identity_windows": windows,
        "window_coordinates": {c: settings.coordinate_of(c) for c in settings.runs},
        "schedules": _schedules(case_rows, settings.runs),
        "metrics": {m: {"title": METRIC_TITLES[m], "higher_is_better": m not in LOWER_IS_BETTER}
                    for m in (*IMAGE_METRICS, "prompt_fidelity")},
        "skipped": dict(skipped),
        "summary": summary,
        "prompt_fidelity": _fidelity_summary(case_rows, settings, skipped),
        "differences": _differences(case_rows, settings, skipped),
        "by_num_subjects": _by_num_subjects(case_rows, settings.runs, skipped),
        "pareto": _pareto(summary, skipped),
        "badcases": _badcase_section(case_rows, settings, skipped, badcases),
        "stats": dict(stats or {}),
        "processes": processes or [{"rank": 0, "cases": [row["id"] for row in case_rows]}],
        "cases": list(case_rows),
        "files": {"json": "report.json", "markdown": "report.md", "plot": "pareto.png"},
    }


def report_of_run(run) -> dict[str, Any]:
    """The report of an ``idglow.eval.runner.EvalRun`` (see :func:`build_report`)."""
    return build_report(run.manifest, run.case_rows, run.settings, model_info=run.model_info, task=run.task,
                        skipped=run.skipped, stats=run.stats, analyzer=run.analyzer, badcases=run.badcases,
                        processes=run.processes)


def _threshold(report: dict[str, Any], key: str) -> str:
    value = report["analyzer"].get(key)
    return "?" if value is None else f"{float(value):g}"


def _fmt(entry: dict[str, Any] | None, digits: int = 3) -> str:
    if entry is None:
        return "–"
    if "skipped" in entry:
        return "skipped"
    return f"{entry['mean']:.{digits}f} [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"


def _cell(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _md_table(first: list[str], columns: list[str]) -> list[str]:
    """The head of a table: the ``first`` columns, then one per entry of ``columns``."""
    cells = " | ".join(first) + " | " + " | ".join(columns)
    return [f"| {cells} |", "|" + "---|" * (len(first) + len(columns))]


def _md_table_head(title: str, first: list[str], columns: list[str]) -> list[str]:
    """A section's title and the head of its table."""
    return [f"## {title}", "", *_md_table(first, columns)]


def _md_header(report: dict[str, Any]) -> list[str]:
    """The title, the benchmark's description and the settings the numbers depend on."""
    b, s = report["benchmark"], report["settings"]
    conf = int(round(s["confidence"] * 100))
    first = report["cases"][0]["results"][report["configs"][0]] if report["cases"] else {"images": []}
    images = len(first["images"])
    return [
        f"# IdGlow evaluation: {b['name']} ({b['task']})",
        "",
        b["description"] or "",
        "",
        f"- cases: {b['num_cases']} (from `{b['source']}`), images per case and configuration: {images}",
        f"- model: `{report['model'].get('model')}`, adapter: `{report['model'].get('adapter')}`, "
        f"faces: {report['analyzer'].get('name')}",
        f"- face matching: a face is assigned to a subject at cosine ≥ {_threshold(report, 'match_threshold')}; "
        f"a second face at ≥ {_threshold(report, 'duplicate_threshold')} marks the subject duplicated",
        f"- {s['num_inference_steps']} steps, {s['width']}×{s['height']}, guidance {s['guidance_scale']}, "
        f"id scale {s['id_scale']}",
        f"- identity windows read in: {', '.join(s.get('window_coordinates') or ['sigma'])} (sigma: the noise "
        "level σ; one_minus_sigma: t = 1 − σ; step_fraction: the fraction of the denoising steps done)",
        f"- intervals: {conf}% percentile bootstrap over cases ({s['num_resamples']} resamples)",
        "",
    ]


def _md_summary(report: dict[str, Any]) -> list[str]:
    """The summary table (one row per configuration), the prompt fidelity and the skipped metrics."""
    titles = [METRIC_TITLES[m] for m in IMAGE_METRICS]
    lines = _md_table_head("Summary", ["configuration", "identity window", "coordinate", "steps with identity"],
                           titles)
    for config in report["configs"]:
        w = report["identity_windows"][config]
        window = "none" if w is None else f"[{w[0]:g}, {w[1]:g}]"
        coordinate = (report.get("window_coordinates") or {}).get(config) or "–"
        cells = [_fmt(report["summary"][config][m]) for m in IMAGE_METRICS]
        lines.append(f"| {report['config_titles'][config]} (`{config}`) | {window} | {coordinate} | "
                     f"{_md_steps((report.get('schedules') or {}).get(config))} | " + " | ".join(cells) + " |")
    lines += ["", f"Prompt fidelity (same prompts for every configuration): {_fmt(report['prompt_fidelity'])}", ""]
    if report["skipped"]:
        lines += ["Skipped metrics:", ""]
        lines += [f"- {METRIC_TITLES[m]}: skipped — {why}" for m, why in sorted(report["skipped"].items())]
        lines.append("")
    lines += ["Lower is better for missing faces, duplicate faces and age error; higher for the rest.", ""]
    return lines


def _md_steps(schedule: dict[str, Any] | None) -> str:
    """The steps with identity of a run's schedule: their count and σ range (– when not recorded)."""
    if not schedule:
        return "–"
    sigmas = schedule["active_sigmas"]
    return f"{len(sigmas)} (σ {min(sigmas):.3f}–{max(sigmas):.3f})" if sigmas else "0"


def _md_differences(report: dict[str, Any], metrics: list[str]) -> list[str]:
    """The paired-differences table (nothing when no pair of configurations was run)."""
    if not report["differences"]:
        return []
    lines = _md_table_head("Paired differences", ["difference"], [METRIC_TITLES[m] for m in metrics])
    for name, diffs in report["differences"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(diffs[m]) for m in diffs) + " |")
    lines.append("")
    return lines


def _md_pareto(report: dict[str, Any]) -> list[str]:
    p = report["pareto"]
    y_title = METRIC_TITLES[p["y"]] if p["y"] else "no aesthetic or text score (skipped)"
    return [
        "## Pareto balance",
        "",
        f"x: {METRIC_TITLES[p['x']]}, y: {y_title}. Non-dominated: "
        + (", ".join(f"`{c}`" for c in p["front"]) or "none"),
        "",
        "![Pareto plot](pareto.png)",
        "",
    ]


def _md_by_size(report: dict[str, Any], metrics: list[str]) -> list[str]:
    titles = [METRIC_TITLES[m] for m in metrics]
    lines = _md_table_head("By number of people", ["configuration", "people"], titles)
    for config, sizes in report["by_num_subjects"].items():
        for n, values in sizes.items():
            lines.append(f"| `{config}` | {n} | " + " | ".join(_cell(values[m]) for m in metrics) + " |")
    return lines


def _md_cases(report: dict[str, Any]) -> list[str]:
    """One row per case: its size, its prompt's fidelity and the mean FaceSim of each configuration."""
    configs = report["configs"]
    titles = [f"FaceSim `{c}`" for c in configs]
    lines = _md_table_head("Cases", ["case", "people", "prompt fidelity"], titles)
    for row in report["cases"]:
        sims = [_cell(row["results"][c]["face_sim_mean"]) for c in configs]
        head = f"| {row['id']} | {row['num_subjects']} | {_cell(row['prompt_fidelity'])} | "
        lines.append(head + " | ".join(sims) + " |")
    return lines


def _md_shaped(report: dict[str, Any], metrics: list[str]) -> list[str]:
    """The shaped-vs-plain section: what was compared, shaped − plain per configuration, the failure → metric
    table, the skipped cases and each compared case's bad cases and prompts (nothing without bad cases)."""
    section = report.get("badcases")
    if not section:
        return []
    types = ", ".join(section["failure_types"]) or "none"
    lines = [
        "## Bad-case shaped prompts vs plain prompts", "",
        f"{section['num_badcases']} bad case(s) from `{section['source']}` (failure types: {types}), at most "
        f"{section['max_badcases']} per prompt; {section['cases_compared']} case(s) compared, "
        f"{len(section['skipped_cases'])} skipped.", "",
        section["note"] + " Negative is better for missing faces, duplicate faces and age error.", "",
    ]
    lines += _md_table(["shaped − plain"], [METRIC_TITLES[m] for m in metrics])
    for config, diffs in section["differences"].items():
        lines.append(f"| `{config}` | " + " | ".join(_fmt(diffs[m]) for m in metrics) + " |")
    lines += ["", "### Failure named → metric", ""]
    lines += _md_table(["failure type", "cases shaped", "metric"], [f"`{c}`" for c in report["configs"]])
    for entry in section["failure_metrics"]:
        metric = "none available" if entry["metric"] is None else METRIC_TITLES[entry["metric"]]
        if entry.get("note"):
            metric += f" ({entry['note']})"
        if entry["metric"] is None:
            cells = ["–"] * len(report["configs"])
        elif "skipped" in entry:
            cells = [f"skipped — {entry['skipped']}"] * len(report["configs"])
        else:
            cells = [_fmt(entry["differences"][c]) for c in report["configs"]]
        lines.append(f"| {entry['failure_type']} | {entry['cases_shaped']} | {metric} | " + " | ".join(cells) + " |")
    lines.append("")
    if section["skipped_cases"]:
        lines += ["Cases left out of the comparison:", ""]
        lines += [f"- {case}: {why}" for case, why in section["skipped_cases"].items()] + [""]
    return lines + _md_shaped_prompts(report)


def _md_shaped_prompts(report: dict[str, Any]) -> list[str]:
    """Each compared case: the bad cases and failure types that shaped its prompt, and both prompt texts."""
    lines = ["### Prompts", ""]
    for row in report["cases"]:
        shaped = row["shaped"]
        if not shaped["results"]:
            continue
        ids = ", ".join(str(i) for i in shaped["badcase_ids"])
        lines += [f"- {row['id']}: bad cases {ids} ({', '.join(shaped['failure_types'])})",
                  f"  - plain: {shaped['plain_prompt']}", f"  - shaped: {shaped['shaped_prompt']}"]
    return lines + [""]


def render_markdown(report: dict[str, Any]) -> str:
    """``report.md``: the report (as built by :func:`build_report`) as Markdown tables."""
    metrics = [m for m in IMAGE_METRICS if m not in report["skipped"]]
    lines = _md_header(report) + _md_summary(report) + _md_differences(report, metrics) + _md_pareto(report)
    lines += _md_shaped(report, metrics)
    lines += _md_by_size(report, metrics) + [""] + _md_cases(report) + [""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and pareto.png to ``out_dir``; returns their paths."""
    from idglow.eval.plot import pareto_plot

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "plot": out / "pareto.png"}
    paths["json"].write_text(json.dumps(report, indent=2, allow_nan=False, default=_json_default))
    paths["markdown"].write_text(render_markdown(report))
    pareto_plot(report, paths["plot"])
    return paths


def _json_default(value: Any):
    raise TypeError(f"cannot write {type(value).__name__} to the report")
