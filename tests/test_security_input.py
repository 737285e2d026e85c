"""Malformed API input gets the app's own message naming the input, through gradio_client and raw HTTP."""

from __future__ import annotations

import httpx
import pytest

pytest.importorskip("gradio_client")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import ValidationError  # noqa: E402

TABLE = {"headers": ["person", "label", "target age", "ID weight"], "data": [[1, "Ann", None, 1.0]]}
GENERIC = "has not enabled verbose error reporting"


@pytest.fixture(scope="module")
def visitor(tmp_path_factory, sample_portraits):
    from annotation.ui.testing import running_app

    with running_app(tmp_path_factory.mktemp("input-data")) as app:
        client = Client(app.url, verbose=False, download_files=False)
        client.predict([handle_file(str(sample_portraits["person1"]))], True, api_name="/upload")
        yield app, client


def _generate_args(**changes) -> list:
    args = dict(table=TABLE, task="fusion", scene="", prompt="", consent=True, seed=3, steps=2, guidance=3.5,
                id_scale=1.0, lo=0.0, hi=1.0, num_images=1, size=64, versions=["tiny-demo"])
    args.update(changes)
    return list(args.values())


@pytest.mark.parametrize("changes, message", [
    (dict(table="garbage"), r"per person: 'garbage' does not fit"),
    (dict(table={"headers": TABLE["headers"], "data": "x"}), r"per person: .* does not fit at data"),
    (dict(table={"headers": TABLE["headers"], "data": [[1, "Ann"]]}), r"row 1 has 2 cells but the table has 4 columns"),
    (dict(table=None), r"per person: no table was sent"),
    (dict(seed="abc"), r"Seed \(-1 = random\): 'abc' is not a number"),
    (dict(guidance=[1, 2]), r"Guidance: \[1, 2\] is not a number"),
    (dict(consent="yes"), r"I confirm .*: 'yes' is not true or false"),
])
def test_malformed_generate_input_is_named_in_the_answer(visitor, changes, message):
    _, client = visitor
    with pytest.raises(ValidationError, match=message):
        client.predict(*_generate_args(**changes), api_name="/generate")


def test_malformed_upload_input_is_named_in_the_answer(visitor):
    _, client = visitor
    with pytest.raises(ValidationError, match=r"Portraits .*: 'notalist' does not fit: Input should be a valid list"):
        client.predict("notalist", True, api_name="/upload")


def test_raw_http_call_gets_a_422_naming_the_input(visitor):
    app, _ = visitor
    answer = httpx.post(f"{app.url}gradio_api/call/generate", json={"data": [None, *_generate_args(seed="abc")]},
                        timeout=30)
    assert answer.status_code == 422 and GENERIC not in answer.text
    [problem] = answer.json()["detail"]
    assert problem["parameter_name"] == "Seed (-1 = random)" and problem["message"] == "'abc' is not a number"


def test_well_formed_input_still_generates(visitor):
    _, client = visitor
    gallery = client.predict(*_generate_args(), api_name="/generate")[0]
    assert len(gallery) == 1
