"""`idglow eval --badcases`: every composed prompt is run again shaped by the retrieved bad cases, on the same
cases, seeds and configurations, and the report gives shaped − plain per metric with a bootstrap interval, the
failure → metric table, the bad cases and both prompts of each case; fixed prompts are skipped with the reason.

The tiny model's text encoders are random, so the numbers mean nothing here: these tests check the plumbing."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from idglow.cli import main
from idglow.eval.metrics import summarize
from idglow.eval.report import build_report, render_markdown
from idglow.eval.runner import FIXED_PROMPT_REASON, EvalSettings
from idglow.pipeline import IdGlowPipeline
from idglow.prompting.badcases import FAILURE_CONSTRAINTS

CONFIGS = ["base", "idglow"]
BADCASES = [
    {"id": 11, "failure_types": ["missing_person"], "task": "fusion", "num_subjects": 2},
    {"id": 12, "failure_types": ["duplicate_face", "texture_mismatch"], "task": "fusion"},
    {"failure_types": ["wrong_age"], "task": "age", "target_ages": [6]},  # needs a target age: never applies here
]
SEED = 5


def eval_args(manifest, badcases, out, *extra):
    return ["eval", "--no-progress", "--bootstrap", "200", "--benchmark", str(manifest), "--badcases", str(badcases),
            "--configs", ",".join(CONFIGS), "--steps", "2", "--out", str(out), *map(str, extra)]


def run_quietly(argv):
    """``main(argv)`` with its output captured (module-scoped fixtures cannot use capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sample_portraits):
    """A manifest with two composed cases (2 and 3 people) and one fixed-prompt case, and a bad-case file."""
    folder = tmp_path_factory.mktemp("badcase-eval")
    photos = folder / "photos"
    photos.mkdir()
    for name in ("person1", "person2", "person3"):
        shutil.copy(sample_portraits[name], photos / f"{name}.jpg")
    pair = [{"image": f"photos/person{i}.jpg"} for i in (1, 2)]
    manifest = {
        "name": "shaping", "task": "fusion", "seed": SEED,
        "cases": [
            {"id": "pair", "scene": "two friends at a cafe", "subjects": pair},
            {"id": "trio", "scene": "three friends on a bench",
             "subjects": [{"image": f"photos/person{i}.jpg"} for i in (1, 2, 3)]},
            {"id": "fixed", "prompt": "a photo of two friends", "subjects": pair},
        ],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "badcases.jsonl").write_text("".join(json.dumps(row) + "\n" for row in BADCASES))
    return SimpleNamespace(folder=folder, manifest=folder / "manifest.json", badcases=folder / "badcases.jsonl")


@pytest.fixture(scope="module")
def shaped_run(inputs):
    """One `idglow eval --badcases` run; every pipeline call's prompts and seed are recorded."""
    calls = []
    original = IdGlowPipeline.__call__

    def recording_call(self, prompt=None, **kwargs):
        calls.append({"prompt": prompt, "prompt_2": kwargs.get("prompt_2"), "seed": kwargs.get("seed")})
        return original(self, prompt, **kwargs)

    out = inputs.folder / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(IdGlowPipeline, "__call__", recording_call)
        code, stdout, stderr = run_quietly(eval_args(inputs.manifest, inputs.badcases, out))
    assert code == 0, stderr
    return SimpleNamespace(out=out, stdout=stdout, calls=calls, report=json.loads((out / "report.json").read_text()),
                           markdown=(out / "report.md").read_text())


def rows_by_id(report):
    return {row["id"]: row for row in report["cases"]}


def test_shaped_prompts_carry_the_constraint_sentences_and_plain_ones_do_not(shaped_run):
    rows = rows_by_id(shaped_run.report)
    for case_id, n in (("pair", "two"), ("trio", "three")):
        shaped = rows[case_id]["shaped"]
        missing = FAILURE_CONSTRAINTS["missing_person"].sentence.format(n=n)
        duplicate = FAILURE_CONSTRAINTS["duplicate_face"].sentence.format(n=n)
        assert missing in shaped["shaped_prompt"] and duplicate in shaped["shaped_prompt"]
        assert missing not in shaped["plain_prompt"] and duplicate not in shaped["plain_prompt"]
        assert shaped["plain_prompt"] == rows[case_id]["prompt"]
        assert {missing, duplicate} <= set(shaped["constraints"])
        # Which bad cases shaped it (wrong_age needs a target age; "#3" is the id-less third entry).
        assert sorted(shaped["badcase_ids"]) == [11, 12]
        assert shaped["failure_types"] == ["missing_person", "duplicate_face", "texture_mismatch"]
        # The pipeline got each text under every configuration, with the case's seed.
        sent = [c for c in shaped_run.calls if c["prompt_2"] in (shaped["shaped_prompt"], shaped["plain_prompt"])]
        assert sorted(c["prompt_2"] == shaped["shaped_prompt"] for c in sent) == [False] * 2 + [True] * 2
        assert {c["seed"] for c in sent} == {rows[case_id]["results"]["base"]["seeds"][0]}
    assert len(shaped_run.calls) == 3 * 2 + 2 * 2  # plain: 3 cases; shaped: the 2 composed ones
    visible = FAILURE_CONSTRAINTS["missing_person"].sentence.split("{n}")[1]  # " people are visible, ..."
    assert sum(visible in (c["prompt_2"] or c["prompt"]) for c in shaped_run.calls) == 4
    md = shaped_run.markdown
    assert "### Prompts" in md and f"  - shaped: {rows['pair']['shaped']['shaped_prompt']}" in md
    assert f"  - plain: {rows['pair']['prompt']}" in md and "- pair: bad cases 11, 12 (" in md


def test_report_has_shaped_minus_plain_with_intervals_and_the_failure_table(shaped_run):
    section = shaped_run.report["badcases"]
    assert section["num_badcases"] == 3 and section["cases_compared"] == 2 and section["max_badcases"] == 4
    assert section["failure_types"] == ["missing_person", "duplicate_face", "wrong_age", "texture_mismatch"]
    rows = [row for row in shaped_run.report["cases"] if row["shaped"]["results"]]
    for config in CONFIGS:
        for metric in ("face_sim_mean", "face_sim_worst", "missing_rate", "duplicate_rate"):
            diffs = [row["shaped"]["results"][config][metric] - row["results"][config][metric] for row in rows]
            entry = section["differences"][config][metric]
            assert entry == summarize(diffs, 200, 0.95, 0).to_dict()
            assert entry["n"] == 2 and entry["ci_low"] <= entry["mean"] <= entry["ci_high"]
        assert "age_error" not in section["differences"][config]  # skipped: not an age benchmark
    table = {e["failure_type"]: e for e in section["failure_metrics"]}
    assert list(table) == section["failure_types"]
    assert table["missing_person"]["metric"] == "missing_rate"
    assert table["missing_person"]["differences"] == {c: section["differences"][c]["missing_rate"] for c in CONFIGS}
    assert table["duplicate_face"]["metric"] == "duplicate_rate" and table["duplicate_face"]["cases_shaped"] == 2
    assert table["wrong_age"]["metric"] == "age_error" and table["wrong_age"]["cases_shaped"] == 0
    assert table["wrong_age"]["skipped"] == "not an age benchmark"
    assert table["texture_mismatch"]["metric"] is None and "none available" in table["texture_mismatch"]["skipped"]
    md = shaped_run.markdown
    assert "## Bad-case shaped prompts vs plain prompts" in md and "### Failure named → metric" in md
    assert "| missing_person | 2 | missing faces |" in md
    assert "| texture_mismatch | 2 | none available (no metric measures texture consistency) | – | – |" in md
    assert "random text encoders) the difference means nothing" in md
    assert "missing_person     -> missing_rate: base " in shaped_run.stdout
    assert "bad cases: 2 case(s) compared, 1 skipped" in shaped_run.stdout


def test_shaped_and_plain_outputs_are_cached_apart(shaped_run, inputs, tmp_path):
    assert "generated 10, cached 0" in shaped_run.stdout
    case = shaped_run.out / "cases" / "pair"
    for config in CONFIGS:
        plain, shaped = (json.loads((case / name).read_text()) for name in (f"{config}.json", f"shaped-{config}.json"))
        assert plain["generation_key"] != shaped["generation_key"]
        assert shaped["images"] == [f"shaped-{config}_{SEED}.png"] and plain["images"] == [f"{config}_{SEED}.png"]
    plain, shaped = (np.asarray(Image.open(case / f"{v}idglow_{SEED}.png"), np.int16) for v in ("", "shaped-"))
    assert np.abs(plain - shaped).max() > 0  # the prompt changes even the tiny model's image
    # A rerun regenerates nothing, and a run without bad cases finds its plain images untouched.
    out = tmp_path / "out"
    shutil.copytree(shaped_run.out, out)
    code, stdout, stderr = run_quietly(eval_args(inputs.manifest, inputs.badcases, out))
    assert code == 0, stderr
    assert "generated 0, cached 10, rescored 0" in stdout
    assert json.loads((out / "report.json").read_text())["cases"] == shaped_run.report["cases"]
    argv = eval_args(inputs.manifest, inputs.badcases, out)
    code, stdout, stderr = run_quietly(argv[:argv.index("--badcases")] + argv[argv.index("--badcases") + 2:])
    assert code == 0, stderr
    assert "generated 0, cached 6, rescored 0" in stdout
    assert json.loads((out / "report.json").read_text())["badcases"] is None


def test_fixed_prompt_case_is_skipped_with_its_reason(shaped_run):
    fixed = rows_by_id(shaped_run.report)["fixed"]
    assert fixed["prompt_source"] == "manifest"
    assert fixed["shaped"]["skipped"] == FIXED_PROMPT_REASON and fixed["shaped"]["results"] == {}
    assert fixed["shaped"]["shaped_prompt"] is None and fixed["shaped"]["badcase_ids"] == []
    assert shaped_run.report["badcases"]["skipped_cases"] == {"fixed": FIXED_PROMPT_REASON}
    assert not list((shaped_run.out / "cases" / "fixed").glob("shaped-*"))
    assert f"- fixed: {FIXED_PROMPT_REASON}" in shaped_run.markdown
    assert "fixed prompt" in FIXED_PROMPT_REASON


def test_report_pairs_each_shaped_run_with_its_plain_run():
    """build_report on hand-made rows: shaped − plain is taken case by case, within each configuration."""
    settings = EvalSettings(configs=("base", "idglow"), num_resamples=300)

    def record(missing, sim):
        return {"face_sim_mean": sim, "face_sim_worst": sim, "missing_rate": missing, "duplicate_rate": 0.0,
                "binding_accuracy": 1.0 - missing / 2, "swap_rate": missing / 2, "confusion": None, "copy_paste": None,
                "age_error": None, "clip_score": None, "aesthetic": None, "images": ["x.png"], "per_image": []}

    def row(case_id, plain, shaped):
        return {"id": case_id, "num_subjects": 2, "prompt": "plain", "prompt_fidelity": 1.0,
                "results": {c: record(*plain[c]) for c in plain},
                "shaped": {"skipped": None, "badcase_ids": [1], "failure_types": ["missing_person"],
                           "plain_prompt": "plain", "shaped_prompt": "shaped",
                           "results": {c: record(*shaped[c]) for c in shaped}}}

    rows = [
        row("a", {"base": (1.0, 0.1), "idglow": (0.5, 0.4)}, {"base": (0.5, 0.1), "idglow": (0.5, 0.6)}),
        row("b", {"base": (0.5, 0.2), "idglow": (1.0, 0.3)}, {"base": (0.5, 0.3), "idglow": (0.0, 0.3)}),
    ]
    skipped = {"age_error": "not an age benchmark", "clip_score": "no CLIP", "aesthetic": "no head",
               "confusion": "none", "copy_paste": "no ground truth"}
    manifest = SimpleNamespace(name="hand", source="hand.json", description="")
    badcases = {"source": "b.jsonl", "num_badcases": 1, "failure_types": ["missing_person", "identity_swap"]}
    report = build_report(manifest, rows, settings, model_info={}, task="fusion", skipped=skipped, badcases=badcases)
    diffs = report["badcases"]["differences"]
    assert diffs["base"]["missing_rate"]["mean"] == pytest.approx(-0.25)
    assert diffs["idglow"]["missing_rate"]["mean"] == pytest.approx(-0.5)
    assert diffs["idglow"]["face_sim_worst"]["mean"] == pytest.approx(0.1)
    assert diffs["base"]["missing_rate"] == summarize([-0.5, 0.0], 300, 0.95, 0).to_dict()
    assert diffs["base"]["missing_rate"]["ci_low"] == pytest.approx(-0.5)
    assert diffs["base"]["missing_rate"]["ci_high"] == pytest.approx(0.0)
    table = {e["failure_type"]: e for e in report["badcases"]["failure_metrics"]}
    assert table["identity_swap"]["metric"] == "swap_rate"
    assert table["identity_swap"]["differences"]["idglow"]["mean"] == pytest.approx(-0.25)
    md = render_markdown(report)
    assert ("| `base` | 0.050 [0.000, 0.100] | 0.050 [0.000, 0.100] | 0.125 [0.000, 0.250] | -0.125 [-0.250, 0.000] "
            "| -0.250 [-0.500, 0.000] |") in md
    assert "| missing_person | 2 | missing faces | -0.250 [-0.500, 0.000] | -0.500 [-1.000, 0.000] |" in md
    assert build_report(manifest, rows, settings, model_info={}, task="fusion", skipped=skipped)["badcases"] is None


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (None, [], "--badcases {path}: no such file"),
        ("{not json\n", [], "--badcases {path}: not JSON or JSON Lines"),
        ('{"failure_types": ["blurry"]}\n', [], "--badcases {path}: entry 1: unknown failure type 'blurry'"),
        ('{"failure_types": ["artifact"]}\n', ["--max-badcases", "-1"], "--max-badcases -1: must be >= 0"),
    ],
)
def test_bad_badcases_input_gives_a_clear_error(tmp_path, capsys, content, extra, message):
    path = tmp_path / "badcases.jsonl"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "out"
    code = main(eval_args("fusion", path, out, *extra))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("idglow: error: ") and message.format(path=path) in err and err.count("\n") == 1
    assert not out.exists()  # refused before any model loads
