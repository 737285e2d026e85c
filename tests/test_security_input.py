"""Malformed API input gets the app's own message naming the input, through gradio_client and raw HTTP."""

from __future__ import annotations

import httpx
import pytest

pytest.importorskip("gradio_client")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import ValidationError  # noqa: E402

GENERIC = "has not enabled verbose error reporting"


@pytest.fixture(scope="module")
def visitor(tmp_path_factory, sample_portraits):
    from app_fixtures import running_app

    with running_app(tmp_path_factory.mktemp("input-data")) as app:
        client = Client(app.url, verbose=False, download_files=False)
        client.predict(files=[handle_file(str(sample_portraits["person1"]))], consent=True, api_name="/upload")
        yield app, client


def _generate_kwargs(**changes) -> dict:
    values = dict(task="fusion", scene="", prompt="", consent=True, seed=3, steps=2, guidance=3.5, id_scale=1.0,
                  window_lo=0.0, window_hi=1.0, num_images=1, size=64, model_versions=["tiny-demo"], label_0="Ann",
                  age_0=None, weight_0=1.0)
    values.update(changes)
    return values


@pytest.mark.parametrize("changes, message", [
    (dict(seed="abc"), r"seed: 'abc' is not a number \(the “Seed \(-1 = random\)” field\)"),
    (dict(guidance=[1, 2]), r"guidance: \[1, 2\] is not a number \(the “Guidance” field\)"),
    (dict(consent="yes"), r"consent: 'yes' is not true or false \(the “I may use these photos"),
    (dict(age_0="old"), r"age_0: 'old' is not a number \(the “Target age” field\)"),
    (dict(weight_0=[1]), r"weight_0: \[1\] is not a number \(the “ID weight” field\)"),
    (dict(weight_0=True), r"weight_0: True is not a number"),
    (dict(steps=None), r"steps: no number was sent \(the “Steps” field\)"),
    (dict(label_0=["Ann", "Bob"]), r"label_0: \['Ann', 'Bob'\] is not text: send a string \(the “Name” field\)"),
    (dict(scene={"where": "park"}), r"scene: \{'where': 'park'\} is not text"),
    (dict(task=5), r"task: 5 is not one of 'fusion', 'age' \(the “Task” field\)"),
    (dict(size="big"), r"size: 'big' is not one of 64, 128"),
    (dict(id_profile="steep"), r"id_profile: 'steep' is not one of 'flat', 'linear'"),
    (dict(model_versions="tiny-demo"), r"model_versions: 'tiny-demo' is not a list: send a list of some of "
                                       r"'tiny-demo'"),
])
def test_malformed_generate_input_is_named_in_the_answer(visitor, changes, message):
    _, client = visitor
    with pytest.raises(ValidationError, match=message):
        client.predict(**_generate_kwargs(**changes), api_name="/generate")


def test_malformed_upload_input_is_named_in_the_answer(visitor):
    _, client = visitor
    with pytest.raises(ValidationError, match=r"files: 'notalist' does not fit: Input should be a valid list"):
        client.predict(files="notalist", consent=True, api_name="/upload")


def test_raw_http_call_gets_a_422_naming_the_input(visitor):
    app, _ = visitor
    [fn] = [fn for fn in app.demo.fns.values() if fn.api_name == "generate"]
    values = _generate_kwargs(seed="abc")
    # the event's inputs in order, each widget's own value where the call names none (the state: None)
    data = [values.get(name, getattr(widget, "value", None)) for name, widget in zip(fn.input_parameter_names,
                                                                                      fn.inputs, strict=True)]
    answer = httpx.post(f"{app.url}gradio_api/call/generate", json={"data": data}, timeout=30)
    assert answer.status_code == 422 and GENERIC not in answer.text
    [problem] = answer.json()["detail"]
    assert problem["parameter_name"] == "seed"
    assert problem["message"] == "'abc' is not a number (the “Seed (-1 = random)” field)"


def test_a_broken_table_is_named_with_what_is_wrong():
    """The table check, on a Dataframe input (the app's tables are outputs today)."""
    import gradio as gr

    from annotation.ui.route_guard import _named_problem

    table = gr.Dataframe(headers=["person", "label"], label="per person")
    good = {"headers": ["person", "label"], "data": [[1, "Ann"]]}
    assert _named_problem(table, "people", good) is None
    assert _named_problem(table, "people", {"headers": ["person", "label"], "data": [[1]]}) == (
        "people", "row 1 has 1 cells but the table has 2 columns (person, label) (the “per person” field)")
    assert _named_problem(table, None, None)[0] == "per person"
    assert "does not fit at data" in _named_problem(table, "people", {"headers": ["person"], "data": "x"})[1]


def test_well_formed_input_still_generates(visitor):
    _, client = visitor
    gallery, _, seed_text, status, pngs, _ = client.predict(**_generate_kwargs(label_0="Ann", age_0=30,
                                                                               weight_0=1.2, scene="a park"),
                                                            api_name="/generate")
    assert len(gallery) == 1 and "Used seed: **3**" in seed_text and len(pngs) == 1
    assert "Ann" in status and "a park" in status


def _event(app, api_name: str):
    [fn] = [fn for fn in app.demo.fns.values() if fn.api_name == api_name]
    return fn


@pytest.mark.parametrize("route", ["call", "call/v2", "run", "api"])
def test_every_route_gets_the_same_checks_state_inputs_included(visitor, route):
    app, _ = visitor
    fn = _event(app, "generate")
    values = _generate_kwargs(seed="abc")
    named = {name: values.get(name, getattr(widget, "value", None))
             for name, widget in zip(fn.input_parameter_names, fn.inputs, strict=True)
             if not getattr(widget, "skip_api", False)}
    body = named if route == "call/v2" else {"data": list(named.values())}  # as the API page shows: no state
    assert len(named) < len(fn.inputs), "the event has a session-state input that the route leaves out"
    answer = httpx.post(f"{app.url}gradio_api/{route}/generate", json=body, timeout=60)
    assert answer.status_code == 422, (route, answer.status_code, answer.text[:300])
    [problem] = answer.json()["detail"]
    assert problem["parameter_name"] == "seed" and "'abc' is not a number" in problem["message"]


@pytest.mark.parametrize("changes, message", [
    (dict(guidance=1e308), r"guidance: 1e\+308 is above the maximum 10"),
    (dict(steps=100), r"steps: 100 is above the maximum 60 \(the “Steps” field\)"),
    (dict(steps=0), r"steps: 0 is below the minimum 1"),
    (dict(seed=-5), r"seed: -5 is below the minimum -1"),
    (dict(window_hi="inf"), r"window_hi: 'inf' is not a finite number"),
])
def test_numbers_outside_their_widget_range_are_refused(visitor, changes, message):
    _, client = visitor
    with pytest.raises(ValidationError, match=message):
        client.predict(**_generate_kwargs(**changes), api_name="/generate")
