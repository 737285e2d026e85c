"""Evaluation report: per-configuration summaries with bootstrap intervals, paired differences, the Pareto
front, written as ``report.json`` (everything), ``report.md`` (tables) and ``pareto.png`` (the plot)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from idglow.eval.metrics import pareto_front, summarize

METRIC_TITLES = {
    "face_sim_mean": "FaceSim (mean person)",
    "face_sim_worst": "FaceSim (worst person)",
    "missing_rate": "missing faces",
    "duplicate_rate": "duplicate faces",
    "age_error": "age error (years)",
    "clip_score": "CLIP score",
    "aesthetic": "aesthetic",
    "prompt_fidelity": "prompt fidelity",
}
PARETO_X = "face_sim_mean"
PARETO_Y_CHOICES = ("aesthetic", "clip_score")
DIFFERENCES = (("idglow", "base"), ("idglow", "always_on"), ("always_on", "base"))


def _paired_difference(rows, metric: str, a: str, b: str, num_resamples: int, confidence: float, seed: int):
    diffs = []
    for row in rows:
        ra, rb = row["results"].get(a), row["results"].get(b)
        if ra is None or rb is None or ra.get(metric) is None or rb.get(metric) is None:
            continue
        diffs.append(ra[metric] - rb[metric])
    summary = summarize(diffs, num_resamples, confidence, seed)
    return None if summary is None else summary.to_dict()


def pareto_axes(skipped: dict[str, str]) -> tuple[str, str | None]:
    """x: identity fidelity; y: the aesthetic score, else the CLIP score, else None (both skipped)."""
    y = next((m for m in PARETO_Y_CHOICES if m not in skipped), None)
    return PARETO_X, y


def build_report(manifest, case_rows: Sequence[dict[str, Any]], settings, *, model_info: dict[str, Any],
                 task: str, skipped: dict[str, str], stats: dict[str, int] | None = None,
                 analyzer: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict; summaries are means over cases (each case's value is the mean over its
    images), with percentile-bootstrap intervals over cases."""
    from idglow.eval.runner import CONFIG_TITLES, IMAGE_METRICS, LOWER_IS_BETTER, config_window

    r, conf, seed = settings.num_resamples, settings.confidence, settings.bootstrap_seed
    summary: dict[str, dict[str, Any]] = {}
    for config in settings.configs:
        summary[config] = {}
        for metric in IMAGE_METRICS:
            if metric in skipped:
                summary[config][metric] = {"skipped": skipped[metric]}
                continue
            values = [row["results"][config][metric] for row in case_rows]
            s = summarize(values, r, conf, seed)
            summary[config][metric] = s.to_dict() if s else {"skipped": "no case has a value"}
    fidelity = None
    if "prompt_fidelity" in skipped:
        fidelity = {"skipped": skipped["prompt_fidelity"]}
    else:
        s = summarize([row["prompt_fidelity"] for row in case_rows], r, conf, seed)
        fidelity = s.to_dict() if s else {"skipped": "no case has a value"}
    differences: dict[str, dict[str, Any]] = {}
    for a, b in DIFFERENCES:
        if a in settings.configs and b in settings.configs:
            differences[f"{a}-{b}"] = {
                m: _paired_difference(case_rows, m, a, b, r, conf, seed)
                for m in IMAGE_METRICS if m not in skipped
            }
    by_size: dict[str, dict[str, dict[str, float | None]]] = {}
    for config in settings.configs:
        by_size[config] = {}
        for n in sorted({row["num_subjects"] for row in case_rows}):
            rows = [row for row in case_rows if row["num_subjects"] == n]
            by_size[config][str(n)] = {}
            for m in IMAGE_METRICS:
                if m in skipped:
                    continue
                vals = [row["results"][config][m] for row in rows if row["results"][config][m] is not None]
                by_size[config][str(n)][m] = sum(vals) / len(vals) if vals else None
    x_metric, y_metric = pareto_axes(skipped)
    points = {}
    for config in settings.configs:
        x = summary[config][x_metric].get("mean")
        y = summary[config][y_metric].get("mean") if y_metric else None
        points[config] = (x, y)
    valid = {c: p for c, p in points.items() if p[0] is not None and (y_metric is None or p[1] is not None)}
    front = pareto_front(valid) if valid else []
    windows = {}
    for config in settings.configs:
        w = config_window(config, task, settings)
        windows[config] = None if w is None else [w.sigma_lo, w.sigma_hi]
    return {
        "benchmark": {"name": manifest.name, "task": task, "source": manifest.source,
                      "description": manifest.description, "num_cases": len(case_rows)},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": dict(model_info),
        "analyzer": analyzer or {},
        "settings": settings.to_dict(),
        "configs": list(settings.configs),
        "config_titles": {c: CONFIG_TITLES[c] for c in settings.configs},
        "identity_windows": windows,
        "metrics": {m: {"title": METRIC_TITLES[m], "higher_is_better": m not in LOWER_IS_BETTER}
                    for m in (*IMAGE_METRICS, "prompt_fidelity")},
        "skipped": dict(skipped),
        "summary": summary,
        "prompt_fidelity": fidelity,
        "differences": differences,
        "by_num_subjects": by_size,
        "pareto": {"x": x_metric, "y": y_metric, "points": {c: list(p) for c, p in points.items()},
                   "front": front},
        "stats": dict(stats or {}),
        "cases": list(case_rows),
        "files": {"json": "report.json", "markdown": "report.md", "plot": "pareto.png"},
    }


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


def render_markdown(report: dict[str, Any]) -> str:
    from idglow.eval.runner import IMAGE_METRICS

    b, s = report["benchmark"], report["settings"]
    conf = int(round(s["confidence"] * 100))
    first = report["cases"][0]["results"][report["configs"][0]] if report["cases"] else {"images": []}
    images = len(first["images"])
    lines = [
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
        f"- intervals: {conf}% percentile bootstrap over cases ({s['num_resamples']} resamples)",
        "",
        "## Summary",
        "",
        "| configuration | identity window (σ) | " + " | ".join(METRIC_TITLES[m] for m in IMAGE_METRICS) + " |",
        "|---|---|" + "---|" * len(IMAGE_METRICS),
    ]
    for config in report["configs"]:
        w = report["identity_windows"][config]
        window = "none" if w is None else f"[{w[0]:g}, {w[1]:g}]"
        cells = [_fmt(report["summary"][config][m]) for m in IMAGE_METRICS]
        lines.append(f"| {report['config_titles'][config]} (`{config}`) | {window} | " + " | ".join(cells) + " |")
    lines += ["", f"Prompt fidelity (same prompts for every configuration): {_fmt(report['prompt_fidelity'])}", ""]
    if report["skipped"]:
        lines += ["Skipped metrics:", ""]
        lines += [f"- {METRIC_TITLES[m]}: skipped — {why}" for m, why in sorted(report["skipped"].items())]
        lines.append("")
    lines += ["Lower is better for missing faces, duplicate faces and age error; higher for the rest.", ""]
    if report["differences"]:
        lines += ["## Paired differences", "", "| difference | " +
                  " | ".join(METRIC_TITLES[m] for m in IMAGE_METRICS if m not in report["skipped"]) + " |",
                  "|---|" + "---|" * len([m for m in IMAGE_METRICS if m not in report["skipped"]])]
        for name, diffs in report["differences"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt(diffs[m]) for m in diffs) + " |")
        lines.append("")
    p = report["pareto"]
    y_title = METRIC_TITLES[p["y"]] if p["y"] else "no aesthetic or text score (skipped)"
    lines += [
        "## Pareto balance",
        "",
        f"x: {METRIC_TITLES[p['x']]}, y: {y_title}. Non-dominated: "
        + (", ".join(f"`{c}`" for c in p["front"]) or "none"),
        "",
        "![Pareto plot](pareto.png)",
        "",
        "## By number of people",
        "",
    ]
    metrics = [m for m in IMAGE_METRICS if m not in report["skipped"]]
    lines += ["| configuration | people | " + " | ".join(METRIC_TITLES[m] for m in metrics) + " |",
              "|---|---|" + "---|" * len(metrics)]
    for config, sizes in report["by_num_subjects"].items():
        for n, values in sizes.items():
            lines.append(f"| `{config}` | {n} | " + " | ".join(_cell(values[m]) for m in metrics) + " |")
    lines += ["", "## Cases", "", "| case | people | prompt fidelity | " +
              " | ".join(f"FaceSim `{c}`" for c in report["configs"]) + " |",
              "|---|---|---|" + "---|" * len(report["configs"])]
    for row in report["cases"]:
        sims = [_cell(row["results"][c]["face_sim_mean"]) for c in report["configs"]]
        lines.append(f"| {row['id']} | {row['num_subjects']} | {_cell(row['prompt_fidelity'])} | " + " | ".join(sims) + " |")
    lines.append("")
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
