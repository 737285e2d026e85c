"""Eval scores binding on real faces (dlib): two people of insightface's t1.jpg side by side, judged against a
literal prompt that puts them in the right or the wrong order, and copy-paste against a ground-truth photo."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from idglow.eval.manifest import EvalCase, SubjectResolver, SubjectSpec, parse_manifest
from idglow.eval.runner import CaseInputs, EvalRunner, EvalSettings, encode_references, literal_positions

PROMPT = "The first person from the left ({}) waves. The second person from the left ({}) smiles."


@pytest.fixture(scope="module")
def scoring():
    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.testing import tiny_pipeline

    analyzer = DlibAnalyzer()
    runner = EvalRunner(tiny_pipeline(), analyzer, EvalSettings(configs=("base",)), progress=False)
    return analyzer, runner


def side_by_side(resolver, specs) -> Image.Image:
    """The two subjects' crops, mirrored, left and right in one picture."""
    crops = [resolver.resolve(s).image for s in specs]
    group = Image.new("RGB", (440, 240), (128, 128, 128))
    for k, crop in enumerate(crops):
        group.paste(ImageOps.mirror(crop).resize((200, 200)), (10 + 220 * k, 20))
    return group


def case_inputs(analyzer, case, resolver, runner):
    subjects = resolver.resolve_case(case)
    embeds = encode_references(analyzer, subjects)
    return CaseInputs(case, subjects, embeds, {"prompt": case.prompt}, case.prompt, "manifest", None,
                      positions=literal_positions(case), truth=runner.truth_of(case, resolver, embeds))


def test_eval_counts_swaps_where_the_prompt_puts_people(scoring):
    analyzer, runner = scoring
    resolver = SubjectResolver(analyzer)
    ann, bob = (SubjectSpec(package="insightface", path="data/images/t1.jpg", face=i, label=name)
                for i, name in ((0, "Ann"), (2, "Bob")))
    picture = side_by_side(resolver, (ann, bob))  # Ann left, Bob right
    right = EvalCase("right", (ann, bob), prompt=PROMPT.format("Ann", "Bob"))
    wrong = EvalCase("wrong", (ann, bob), prompt=PROMPT.format("Bob", "Ann"))
    assert literal_positions(right) == [1, 2] and literal_positions(wrong) == [2, 1]
    (good,) = runner.score_images([picture], case_inputs(analyzer, right, resolver, runner), task="fusion")
    (bad,) = runner.score_images([picture], case_inputs(analyzer, wrong, resolver, runner), task="fusion")
    assert (good["binding_accuracy"], good["swap_rate"]) == (1.0, 0.0)
    assert (bad["binding_accuracy"], bad["swap_rate"]) == (0.0, 1.0)
    assert bad["face_sim_mean"] == good["face_sim_mean"] >= 0.92  # likeness alone cannot tell them apart
    assert good["confusion"] > 0 and good["copy_paste"] is None
    assert bad["binding"]["instead"] == [1, 0]


def test_ground_truth_photo_gives_copy_paste(scoring, tmp_path):
    analyzer, runner = scoring
    data = {"task": "fusion", "cases": [{"id": "gt", "prompt": PROMPT.format("Ann", "Bob"),
                                         "ground_truth": {"package": "insightface", "path": "data/images/t1.jpg"},
                                         "subjects": [{"package": "insightface", "path": "data/images/t1.jpg",
                                                       "face": 0, "label": "Ann"},
                                                      {"package": "insightface", "path": "data/images/t1.jpg",
                                                       "face": 2, "label": "Bob"}]}]}
    case = parse_manifest(data).cases[0]
    assert case.ground_truth == ("insightface", "data/images/t1.jpg")
    resolver = SubjectResolver(analyzer)
    inputs = case_inputs(analyzer, case, resolver, runner)
    assert all(t is not None for t in inputs.truth)
    picture = side_by_side(resolver, case.subjects)
    (record,) = runner.score_images([picture], inputs, task="fusion")
    per_person = record["binding"]["copy_paste"]
    assert all(-1.0 <= v <= 1.0 for v in per_person)
    assert record["copy_paste"] == pytest.approx(np.mean(per_person), abs=1e-4)
    # the ground truth scored against itself reproduces the ground truth exactly: −1 for everyone
    (itself,) = runner.score_images([resolver.resolve_ground_truth(case)], inputs, task="fusion")
    assert itself["binding"]["copy_paste"] == [-1.0, -1.0]


def test_manifest_ground_truth_must_be_a_path_or_a_package_file():
    from idglow.errors import InputError

    subject = {"image": "a.jpg"}
    case = parse_manifest({"task": "fusion", "cases": [{"subjects": [subject], "ground_truth": "gt.jpg"}]}).cases[0]
    assert case.ground_truth == "gt.jpg"
    with pytest.raises(InputError, match="ground_truth must be a path"):
        parse_manifest({"task": "fusion", "cases": [{"subjects": [subject], "ground_truth": {"path": "x"}}]})


def test_eval_modules_import_in_one_direction():
    """vocabulary ← report ← plot and vocabulary ← runner; the runner never builds the report (the command
    does), so no eval module imports one that imports it back."""
    import ast
    from pathlib import Path

    import idglow.eval

    root = Path(idglow.eval.__file__).parent
    imports = {}
    for path in root.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("idglow.eval."):
                found.add(node.module.rsplit(".", 1)[1])
        imports[path.stem] = found
    assert "runner" not in imports["report"] | imports["plot"] | imports["vocabulary"]
    assert "report" not in imports["runner"] and "plot" not in imports["runner"]

    def reaches(start, seen=()):
        return {m for n in imports.get(start, ()) if n not in seen for m in {n} | reaches(n, (*seen, n))}

    assert all(name not in reaches(name) for name in imports)  # no cycle
