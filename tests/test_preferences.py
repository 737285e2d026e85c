"""The preference questions as one declaration: what is derived from it (DPO dimensions, regions, weights,
export columns), the DPO loss registry, and the export → DPO dataset path on a real SQLite store."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
import torch

from idglow import preferences
from idglow.losses import DPO_DIMENSIONS, DPO_LOSSES, dpo_loss, group_dpo_hinge_loss, group_dpo_loss
from idglow.training.config import DPOConfig


def test_dimensions_regions_weights_and_columns_come_from_the_declaration():
    dims = preferences.dpo_dimensions(2)
    assert [(d.name, d.region, d.slot) for d in dims] == [
        ("overall", "whole_image", None), ("texture", "faces", None), ("artifacts", "background", None),
        ("identity_0", "person", 0), ("identity_1", "person", 1)]
    assert DPO_DIMENSIONS == preferences.dimension_names()
    assert preferences.export_columns() == {"overall": "label_0", "strength": "strength",
                                            "identity": "identity_labels_0", "texture": "texture_label_0",
                                            "artifacts": "artifacts_label_0"}
    assert preferences.weight_vector({"texture": 0.25}, 2) == [1.0, 0.25, 0.5, 1.0, 1.0]
    assert preferences.primary().name == "overall"


def test_a_question_added_to_a_copy_becomes_a_dimension_with_its_region(monkeypatch):
    light = preferences.Question("lighting", "Which is lit better?", "", preferences.PAIRWISE, region="faces",
                                 weight=0.3)
    monkeypatch.setattr(preferences, "QUESTIONS", preferences.QUESTIONS + (light,))
    dims = {d.name: d for d in preferences.dpo_dimensions(1)}
    assert dims["lighting"].region == "faces" and list(dims)[:4] == ["overall", "texture", "artifacts", "lighting"]
    assert DPOConfig(report_to="none").alpha["lighting"] == 0.3
    assert preferences.export_columns()["lighting"] == "lighting_label_0"


def test_bad_declarations_are_refused():
    with pytest.raises(ValueError, match="region 'face'"):
        preferences.Question("x", "", "", preferences.PAIRWISE, region="face")
    with pytest.raises(ValueError, match="'person' region"):
        preferences.Question("x", "", "", preferences.PAIRWISE, region="person")
    with pytest.raises(ValueError, match="2 keys for 3 choices"):
        preferences.Question("x", "", "", preferences.PAIRWISE, keys=("1", "2"))


def test_dpo_config_weights_by_question_and_legacy_keys():
    cfg = DPOConfig.from_dict({"alpha_texture": 0.2, "report_to": "none"})
    assert cfg.alpha == {"overall": 1.0, "texture": 0.2, "artifacts": 0.5, "identity": 1.0}
    assert cfg.alpha_vector(1) == [1.0, 0.2, 0.5, 1.0]
    with pytest.raises(ValueError, match="alpha names colour"):
        DPOConfig(alpha={"colour": 1.0})
    with pytest.raises(ValueError, match="every alpha is 0"):
        DPOConfig(alpha={"overall": 0, "texture": 0, "artifacts": 0, "identity": 0})


def _errors(b=3, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, d, generator=g) for _ in range(4)]


def test_the_loss_is_chosen_by_name_and_weighted_margin_is_the_group_dpo_loss():
    assert dpo_loss("weighted_margin") is group_dpo_loss and dpo_loss("hinge") is group_dpo_hinge_loss
    assert DPOConfig(report_to="none").loss_type == "weighted_margin"
    with pytest.raises(ValueError, match="unknown DPO loss 'ipo'; expected one of weighted_margin, hinge"):
        dpo_loss("ipo")
    with pytest.raises(ValueError, match="loss_type='ipo'"):
        DPOConfig(loss_type="ipo")


def test_hinge_loss_exact_values():
    pw, pl, rw, rl = _errors()
    alpha = torch.tensor([[1.0, 0.0, 2.0, 1.0]] * 3)
    beta, gamma, s = 3.0, 0.5, 0.5
    out = group_dpo_hinge_loss(pw, pl, rw, rl, alpha, s, beta, gamma)
    delta = (pw - rw) - (pl - rl)
    ell = torch.relu(1.0 + beta * delta + gamma * s)
    expected = ((alpha * ell).sum(1) / alpha.sum(1)).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    sig = group_dpo_loss(pw, pl, rw, rl, alpha, s, beta, gamma)
    assert sig.loss.item() != pytest.approx(out.loss.item())  # a different loss, not an alias
    assert torch.equal(sig.reward_accuracy, out.reward_accuracy)


def _store_with_votes(tmp_path):
    from store_fixtures import make_store

    from annotation.store.demo import DemoReference, pattern_image, seed_demo_data

    store = make_store(tmp_path / "store")
    # people with stored embeddings (as the app stores them), so the DPO dataset needs no face analyzer
    refs = [DemoReference(pattern_image(100 + i), [float(i), 1.0, 0.5], "test") for i in range(6)]
    with store.sessions() as session:
        seed_demo_data(session, store.data_dir, candidates=12, votes=60, annotators=4, gold_rate=0.0, seed=3,
                       references=refs)
    return store


def _majority(values):
    if not values:
        return None
    counts = Counter(values).most_common()
    return counts[0][0] if len(counts) == 1 or counts[0][1] > counts[1][1] else "tie"


SIGN = {"a": 1.0, "b": -1.0, "tie": 0.0, None: 0.0, "both_bad": 0.0}


def _expected(votes, n):
    """Preference and strength of one comparison from its stored votes, computed here independently."""
    overall = _majority([v["overall"] for v in votes])
    labels = {"overall": SIGN[overall], "texture": SIGN[_majority([v["texture"] for v in votes if v["texture"]])],
              "artifacts": SIGN[_majority([v["artifacts"] for v in votes if v["artifacts"]])]}
    for j in range(n):
        labels[f"identity_{j}"] = SIGN[_majority([v["identity"][str(j)] for v in votes
                                                  if str(j) in (v["identity"] or {})])]
    agreeing = [{"slight": 0.5, "clear": 1.0, None: 1.0}[v["strength"]] for v in votes if v["overall"] == overall]
    strength = sum(agreeing) / len(agreeing) if overall in ("a", "b") else 0.5
    return labels, strength


def test_export_of_a_sqlite_store_reaches_the_dpo_dataset_with_every_label_and_strength(tmp_path):
    from annotation.store.export import export_preferences
    from annotation.store.votes import stored_votes
    from idglow.training.files import PreferenceExportDataset

    store = _store_with_votes(tmp_path)
    with store.sessions() as session:
        export_preferences(session, tmp_path / "export", data_dir=store.data_dir, with_images=True)
        by_comp = defaultdict(list)
        for vote in stored_votes(session):
            by_comp[vote["comparison_id"]].append(vote)
    dataset = PreferenceExportDataset(tmp_path / "export", resolution=64, split=None)
    assert len(dataset) == len(by_comp) > 10
    names = preferences.dimension_names()
    seen = Counter()
    for i in range(len(dataset)):
        sample = dataset[i]
        n = dataset.items[i]["row"]["num_subjects"]
        labels, strength = _expected(by_comp[sample["pair_id"]], n)
        got = dict(zip(names, sample["preference"].tolist()))
        assert {k: got[k] for k in labels} == labels, sample["pair_id"]
        assert all(got[k] == 0.0 for k in names if k not in labels)  # slots the group does not have
        assert sample["strength"].tolist() == pytest.approx([strength] * len(names))
        seen.update(k for k, v in labels.items() if v != 0 and v != labels["overall"])
        seen["strength"] += strength not in (0.5, 1.0)
    # the store holds dimensions that disagree with overall and averaged strengths: a column read for
    # another would be seen
    assert seen["texture"] and seen["artifacts"] and seen["identity_0"] and seen["strength"]


def test_the_dataset_card_states_the_registered_losses(tmp_path):
    from annotation.store.export import export_preferences

    store = _store_with_votes(tmp_path)
    with store.sessions() as session:
        result = export_preferences(session, tmp_path / "export")
    for loss in DPO_LOSSES.values():
        assert loss.formula in result.card
    assert "`weighted_margin` (default)" in result.card


def test_a_question_added_to_the_declaration_reaches_the_form_the_store_the_export_and_the_dpo_batch(tmp_path,
                                                                                                    monkeypatch):
    import json
    from types import SimpleNamespace

    import gradio as gr
    from sqlalchemy import select, text
    from store_fixtures import make_store

    from annotation.store.demo import DemoReference, pattern_image, seed_demo_data
    from annotation.store.errors import InvalidVote
    from annotation.store.export import export_preferences
    from annotation.store.votes import VoteRequest, record_vote
    from annotation.ui.annotate_handlers import AnnotateHandlers
    from annotation.ui.annotate_tab import build_annotate_tab
    from annotation.ui.services import AnnotationService
    from db.models import Role, User
    from idglow.training.data import boxes_to_masks, collate_group_samples, dpo_region_masks
    from idglow.training.files import PreferenceExportDataset

    light = preferences.Question("lighting", "Which is lit more naturally?", "Light on the people's faces.",
                                 preferences.PAIRWISE, region="faces", weight=0.3)
    monkeypatch.setattr(preferences, "QUESTIONS", preferences.QUESTIONS + (light,))  # the only change
    store = make_store(tmp_path / "store")
    refs = [DemoReference(pattern_image(100 + i), [float(i), 1.0, 0.5], "test") for i in range(6)]
    with store.sessions() as s:
        summary = seed_demo_data(s, store.data_dir, candidates=4, votes=0, annotators=2, gold_rate=0.0,
                                 candidates_per_generation=4, seed=1, references=refs)
        ids = [s.scalar(select(User.id).where(User.username == name)) for name in sorted(summary.annotators)]
    annotator = SimpleNamespace(id=ids[0], username="annotator", role=Role.annotator)
    auth = SimpleNamespace(require=lambda token, role, action: annotator, user=lambda token: annotator)
    handlers = AnnotateHandlers(AnnotationService(store.sessions, store.data_dir, gold_rate=0.0), auth)
    # the form: a widget for the question, shown with every pair
    with gr.Blocks():
        tab = build_annotate_tab(handlers, gr.State(None))
    widget = tab.widgets["lighting"]
    assert isinstance(widget, gr.Radio) and widget.elem_id == "annotate-lighting"
    assert [value for _, value in widget.choices] == ["left", "right", "tie"]
    shown = handlers.show("token")
    assert shown["lighting"]["label"] == "Which is lit more naturally?"
    # the stored vote: answered on screen, stored by name in terms of the candidates
    served = shown["pair"].served
    saved = handlers.vote("token", shown["pair"], {"overall": "left", "lighting": served.side_for_choice("b")})
    assert "Vote saved" in saved["notice"]
    overall_sign = 1.0 if served.choice_for_side("left") == "a" else -1.0
    with store.sessions() as s:
        with pytest.raises(InvalidVote, match="invalid lighting 'bright'; expected a|b|tie"):
            record_vote(s, VoteRequest(served.comparison_id, ids[1], "a", "k1", answers={"lighting": "bright"}))
        stored = s.execute(text("SELECT answers FROM votes")).scalar_one()
    # the database holds the answer under the question's name
    assert (stored if isinstance(stored, dict) else json.loads(stored)) == {"lighting": "b"}

    with store.sessions() as s:
        export_preferences(s, tmp_path / "export", data_dir=store.data_dir, with_images=True)
    dataset = PreferenceExportDataset(tmp_path / "export", resolution=64, split=None)
    [row] = [item["row"] for item in dataset.items]
    assert row["lighting_label_0"] == 0.0  # the export column: image 1 (candidate B) is lit better
    batch = collate_group_samples([dataset[0]])
    names = preferences.dimension_names()
    d = names.index("lighting")
    assert batch["preference"][0, d] == -1.0 and batch["preference"][0, names.index("overall")] == overall_sign
    boxes = [[(0.0, 0.0, 0.5, 0.5)]]
    masks, _ = dpo_region_masks(boxes, boxes, 1, 8, 8)
    assert masks.shape[1] == len(names) == batch["preference"].shape[1]
    assert torch.equal(masks[0, d], boxes_to_masks(boxes, 1, 8, 8)[0, 0])  # the faces region it declares
    assert DPOConfig(report_to="none").alpha_vector()[d] == 0.3


def test_oracle_labels_move_into_the_declared_layout_by_name(monkeypatch):
    import numpy as np

    from idglow.training.synthetic_runs import _declared_layout

    pref = np.array([1, -1, 0, 1, -1], dtype=np.float32)  # overall, texture, artifacts, identity_0, identity_1
    strength = np.array([1.0, 0.5, 0.0, 0.5, 1.0], dtype=np.float32)
    light = preferences.Question("lighting", "Lit better?", "", preferences.PAIRWISE, region="faces")
    monkeypatch.setattr(preferences, "QUESTIONS", (light,) + preferences.QUESTIONS)
    names = preferences.dimension_names()
    out_pref, out_strength = _declared_layout(pref, strength)
    got = {n: (p, s) for n, p, s in zip(names, out_pref.tolist(), out_strength.tolist())}
    assert names[0] == "lighting" and got["lighting"] == (0.0, 0.0)  # the oracle does not judge it
    assert got["overall"] == (1.0, 1.0) and got["texture"] == (-1.0, 0.5) and got["identity_1"] == (-1.0, 1.0)
    assert got["identity_5"] == (0.0, 0.0)


def _key_sequences(node, before=()):
    """Every key sequence of a key map with what it picks: ("y", "a") → ("annotate-texture", "left")."""
    out = {}
    for key, entry in node.items():
        if "pick" in entry:
            out[(*before, key)] = tuple(entry["pick"])
        else:
            out.update(_key_sequences(entry["keys"], (*before, key)))
    return out


def test_the_keys_of_the_declared_questions_are_the_keys_annotators_know():
    from annotation.ui.theme import key_map

    side = {"a": "left", "b": "right", "t": "tie"}
    expected = {("a",): ("annotate-overall", "left"), ("b",): ("annotate-overall", "right"),
                ("t",): ("annotate-overall", "tie"), ("x",): ("annotate-overall", "both_bad"),
                ("s",): ("annotate-strength", "slight"), ("c",): ("annotate-strength", "clear")}
    for k, v in side.items():
        expected |= {(str(i + 1), k): (f"annotate-identity-{i}", v) for i in range(6)}
        expected |= {("y", k): ("annotate-texture", v), ("r", k): ("annotate-artifacts", v)}
    assert _key_sequences(key_map()) == expected
    assert [key_map()[k]["hint"] for k in "1yr"] == ["person 1: press a, b or t", "texture: press a, b or t",
                                                     "fewer artifacts: press a, b or t"]


def test_the_key_legend_of_the_declared_questions_reads_as_before():
    from annotation.ui.theme import shortcuts_md

    assert shortcuts_md() == """**Keys** (outside text boxes):
<kbd>a</kbd> A better · <kbd>b</kbd> B better · <kbd>t</kbd> tie · <kbd>x</kbd> both bad ·
<kbd>s</kbd> slightly · <kbd>c</kbd> clearly ·
<kbd>1</kbd>–<kbd>6</kbd> then <kbd>a</kbd>/<kbd>b</kbd>/<kbd>t</kbd> identity of person 1–6 ·
<kbd>y</kbd> then <kbd>a</kbd>/<kbd>b</kbd>/<kbd>t</kbd> texture ·
<kbd>r</kbd> then <kbd>a</kbd>/<kbd>b</kbd>/<kbd>t</kbd> fewer artifacts ·
<kbd>Enter</kbd> submit · <kbd>k</kbd> skip · <kbd>u</kbd> undo last vote ·
<kbd>f</kbd> flag: <kbd>a</kbd>/<kbd>b</kbd> image, number keys failure types, <kbd>Enter</kbd> flag ·
<kbd>Esc</kbd> cancel
"""


def _lighting(**keys):
    return preferences.Question("lighting", "Which is lit more naturally?", "", preferences.PAIRWISE,
                                region="faces", weight=0.3, **keys)


def test_a_question_added_with_a_prefix_key_gets_keys_a_legend_and_a_summary_entry(monkeypatch):
    from annotation.ui.annotate_handlers import form_label
    from annotation.ui.theme import key_map, shortcuts_js, shortcuts_md, summary_entries

    before = _key_sequences(key_map())
    light = _lighting(keys=("a", "b", "t"), prefix_key="l")
    monkeypatch.setattr(preferences, "QUESTIONS", preferences.QUESTIONS + (light,))
    added = {k: v for k, v in _key_sequences(key_map()).items() if k not in before}
    assert added == {("l", "a"): ("annotate-lighting", "left"), ("l", "b"): ("annotate-lighting", "right"),
                     ("l", "t"): ("annotate-lighting", "tie")}
    assert key_map()["l"]["hint"] == "lighting: press a, b or t"
    assert summary_entries()[-1] == {"label": "<b>l</b> lighting", "id": "annotate-lighting", "person": False,
                                     "grades": []}
    assert "<kbd>l</kbd> then <kbd>a</kbd>/<kbd>b</kbd>/<kbd>t</kbd> lighting" in shortcuts_md()
    assert form_label(light) == "Which is lit more naturally? (key l, then a/b/t)"
    assert '"annotate-lighting"' in shortcuts_js() and "__IDGLOW_KEYS__" not in shortcuts_js()


def test_a_per_person_question_with_a_prefix_key_takes_the_person_number_next(monkeypatch):
    from annotation.ui.theme import key_map, summary_entries

    smile = preferences.Question("smile", "Who smiles more naturally?", "", preferences.PAIRWISE,
                                 per_person=True, region="person", keys=("a", "b", "t"), prefix_key="m")
    monkeypatch.setattr(preferences, "QUESTIONS", preferences.QUESTIONS + (smile,))
    sequences = _key_sequences(key_map())
    assert sequences[("m", "3", "b")] == ("annotate-smile-2", "right")
    assert sequences[("3", "b")] == ("annotate-identity-2", "right")  # the identity keys are unchanged
    assert key_map()["m"]["keys"]["3"]["hint"] == "smile of person 3: press a, b or t"
    assert {"label": "<b>m3</b> smile", "id": "annotate-smile-2", "person": True, "grades": []} in summary_entries()


def test_keys_that_clash_are_refused_with_the_question_to_change(monkeypatch):
    from annotation.ui.theme import key_map

    declared = preferences.QUESTIONS
    for light, message in [(_lighting(keys=("a", "b", "t")), "key 'a' is already a key of question 'overall'"),
                           (_lighting(keys=("a", "b", "t"), prefix_key="y"), "already a key of question 'texture'"),
                           (_lighting(keys=("a", "b", "t"), prefix_key="f"), "key 'f' is the flag key")]:
        monkeypatch.setattr(preferences, "QUESTIONS", declared + (light,))
        with pytest.raises(ValueError, match=message):
            key_map()
    with pytest.raises(ValueError, match="prefix_key 'l' without keys"):
        _lighting(prefix_key="l")
    with pytest.raises(ValueError, match="key 'AB' must be one lower-case character"):
        _lighting(keys=("AB", "b", "t"))
