"""``idglow eval``: run a benchmark (built-in ``fusion`` / ``age`` or a manifest file) under several
configurations and write a Markdown + JSON report and a Pareto plot; with ``--badcases``, also compare prompts
shaped by flagged bad cases with the plain prompts."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from idglow.commands.common import add_model_arguments, model_record, model_settings
from idglow.commands.prompt import add_badcase_arguments, badcases_from_args, badcases_source
from idglow.errors import InputError

logger = logging.getLogger(__name__)

TINY_METRICS_NOTE = (
    "these numbers say nothing about IdGlow: the tiny demo model is untrained and draws no faces, so identity is "
    "0 and every person missing in every configuration. They only show that the benchmark runs; give --model and "
    "--adapter for a real evaluation."
)


def register(subparsers) -> None:
    """Add ``idglow eval`` to the command-line parser."""
    p = subparsers.add_parser(
        "eval",
        help="benchmark identity fidelity vs aesthetic quality (report + Pareto plot)",
        description=(
            "Run a benchmark manifest under base FLUX (no identity), always-on injection and IdGlow's task "
            "schedule; write report.md, report.json and pareto.png. Re-running with the same settings reuses "
            "the cached images in OUT/cases/. With --badcases, every composed prompt is run a second time "
            "composed with the bad cases retrieved for it, and the report gives shaped - plain per metric."
        ),
    )
    p.add_argument("--benchmark", required=True, metavar="fusion|age|PATH",
                   help="a built-in benchmark (fusion, age) or a manifest file (.json/.yaml)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the report and cached images")
    p.add_argument("--configs", default="base,always_on,idglow",
                   help="comma-separated configurations to compare: base, always_on, idglow, linear_decay (the "
                        "idglow window with identity strength falling linearly from its low to its high edge) "
                        "(default: base,always_on,idglow)")
    p.add_argument("--clip", metavar="DIR", help="local transformers CLIPModel folder (CLIP score)")
    p.add_argument("--aesthetic", metavar="PATH",
                   help="local aesthetic predictor head (file or folder; uses --clip or its clip/ subfolder)")
    p.add_argument("--limit", type=int, metavar="N", help="run only the first N cases")
    p.add_argument("--images-per-case", type=int, metavar="N", help="default: the manifest's (usually 1)")
    p.add_argument("--steps", type=int, help="denoising steps (default: 28; tiny model: 8)")
    p.add_argument("--size", type=int, help="image side in pixels (default: 1024; tiny model: 64)")
    p.add_argument("--guidance", type=float, default=3.5, help="FLUX guidance scale")
    p.add_argument("--id-scale", type=float, default=1.0, help="identity strength of the identity configurations")
    p.add_argument("--window", nargs=2, type=float, metavar=("LO", "HI"),
                   help="σ window of the idglow configuration (default: the task's preset)")
    p.add_argument("--window-coordinate", type=window_coordinates, default=("sigma",), metavar="NAME[,NAME...]",
                   help="what --window's bounds mean: sigma (the noise level, default), one_minus_sigma (t = 1 - σ) or "
                        "step_fraction (the fraction of the steps done); several, comma-separated, run the windowed "
                        "configurations once per coordinate, side by side")
    p.add_argument("--match-threshold", type=float,
                   help="cosine similarity a face needs to count for a subject (default: the face analyzer's "
                        "same-person threshold: dlib 0.92, ArcFace 0.36)")
    p.add_argument("--duplicate-threshold", type=float,
                   help="cosine similarity that makes a second face a duplicate (default: the match threshold)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (default 1000)")
    add_badcase_arguments(p, "flagged bad cases (JSON list or JSON Lines, e.g. the badcases.jsonl of idglow export): "
                             "also run every composed prompt shaped by them and report shaped - plain")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_model_arguments(p)
    p.set_defaults(func=run)


def window_coordinates(text: str) -> tuple[str, ...]:
    """``--window-coordinate``'s value: one or more window coordinates, comma-separated."""
    from idglow.schedule import WINDOW_COORDINATES

    names = tuple(c.strip() for c in text.split(",") if c.strip())
    bad = [c for c in names if c not in WINDOW_COORDINATES]
    if bad or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give each of {', '.join(WINDOW_COORDINATES)} at most once")
    return names


def settings_from_args(args: argparse.Namespace, default_steps: int, default_size: int):
    """The evaluation settings from the command line, with this model's default steps and size."""
    from idglow.eval.runner import EvalSettings

    configs = tuple(c.strip() for c in args.configs.split(",") if c.strip())
    size = args.size or default_size
    return EvalSettings(
        configs=configs, num_inference_steps=args.steps or default_steps, height=size, width=size,
        guidance_scale=args.guidance, id_scale=args.id_scale, window=tuple(args.window) if args.window else None,
        images_per_case=args.images_per_case, limit=args.limit, match_threshold=args.match_threshold,
        duplicate_threshold=args.duplicate_threshold,
        num_resamples=args.bootstrap, max_badcases=args.max_badcases, window_coordinates=args.window_coordinate,
    )


def run(args: argparse.Namespace) -> int:
    """``idglow eval``: run the benchmark and write the report; returns the exit code. Launched on several
    processes (``accelerate launch --multi_gpu --num_processes N -m idglow eval ...``), each runs its shard of
    the cases and the main process writes the report."""
    from dataclasses import replace

    from idglow.eval.distributed import launched_state
    from idglow.eval.manifest import load_manifest
    from idglow.eval.runner import EvalRunner
    from idglow.loading import TINY_MODEL_NOTE, load_face_analyzer, load_pipeline

    # Cheap checks first, before any model loads.
    manifest = load_manifest(args.benchmark)
    model = model_settings(args)
    badcases = badcases_from_args(args)
    settings = settings_from_args(args, model.default_steps, model.default_size)
    manifest.select(settings.limit)
    for flag, value in (("--clip", args.clip), ("--aesthetic", args.aesthetic)):
        if value and not Path(value).exists():
            raise InputError(f"{flag} {value}: no such file or folder")
    state = launched_state()  # None unless launched on several processes
    main_process = state is None or state.is_main_process
    if state is not None and model.device is None and state.device.type != "cpu":
        model = replace(model, device=str(state.device))  # one GPU per process
    analyzer = load_face_analyzer(model)
    pipe = load_pipeline(model, face_analyzer=analyzer)
    if model.is_tiny and main_process:
        print(f"note: {TINY_MODEL_NOTE}")
    clip = aesthetic = None
    if args.clip:
        from idglow.eval.scorers import ClipScorer

        clip = ClipScorer(args.clip, device=str(pipe.device))
    if args.aesthetic:
        from idglow.eval.scorers import AestheticScorer

        aesthetic = AestheticScorer(args.aesthetic, clip=clip, device=str(pipe.device))
    runner = EvalRunner(
        pipe, analyzer, settings, clip=clip, aesthetic=aesthetic, progress=not args.no_progress,
        model_info=model_record(args),
        badcases=badcases if args.badcases else None,
        badcases_source=badcases_source(args.badcases) if args.badcases else None,
    )
    from idglow.eval.report import report_of_run, write_report

    out = Path(args.out)
    evaluated = runner.run(manifest, out, state=state)
    try:
        if main_process:
            report = report_of_run(evaluated)
            write_report(report, out)
            print_summary(report, out)
            if model.is_tiny:
                print(f"note: {TINY_METRICS_NOTE}")
    finally:
        if state is not None:  # every process ends together, once the report is written
            state.wait_for_everyone()
            state.destroy_process_group()
    return 0


def print_summary(report: dict, out: Path) -> None:
    """The report in a few lines: each configuration's headline metrics, the face-matching thresholds, the
    bad-case comparison, what was generated or reused, and (on several processes) which process ran which
    cases."""
    x, y = report["pareto"]["x"], report["pareto"]["y"]
    for config in report["configs"]:
        summary = report["summary"][config]
        y_text = f"{y}={summary[y]['mean']:.3f}" if y else "aesthetic/clip=skipped"
        swaps = summary["swap_rate"].get("mean")
        swap_text = "swap_rate=skipped" if swaps is None else f"swap_rate={swaps:.3f}"
        print(f"{config:10s} {x}={summary[x]['mean']:.3f} missing={summary['missing_rate']['mean']:.3f} {swap_text} "
              f"{y_text}")
    faces = report["analyzer"]
    print(f"face matching: match threshold {faces['match_threshold']:g}, "
          f"duplicate threshold {faces['duplicate_threshold']:g} (cosine)")
    if report["badcases"]:
        print_shaped(report)
    stats = report["stats"]
    print(f"generated {stats['generated']}, cached {stats['cached']}, rescored {stats['rescored']} image sets")
    if len(report["processes"]) > 1:
        print(f"{len(report['processes'])} processes: " + "; ".join(
            f"process {p['rank']} ran {', '.join(p['cases']) or 'no case'}" for p in report["processes"]))
    print(f"report: {out / 'report.md'}  {out / 'report.json'}  plot: {out / 'pareto.png'}")


def print_shaped(report: dict) -> None:
    """One line on the bad-case comparison, then shaped − plain of each named failure's metric per
    configuration."""
    section = report["badcases"]
    print(f"bad cases: {section['cases_compared']} case(s) compared, {len(section['skipped_cases'])} skipped "
          "(shaped - plain below; it needs real weights to mean anything)")
    for entry in section["failure_metrics"]:
        if "skipped" in entry:
            print(f"{entry['failure_type']:18s} -> {entry['metric'] or 'no metric'}: skipped ({entry['skipped']})")
            continue
        cells = []
        for config, diff in entry["differences"].items():
            cells.append(f"{config} n/a" if diff is None else
                         f"{config} {diff['mean']:+.3f} [{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}]")
        print(f"{entry['failure_type']:18s} -> {entry['metric']}: " + ", ".join(cells))
