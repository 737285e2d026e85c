"""`idglow eval --window-coordinate`: the window's bounds read as σ, t = 1 − σ or a fraction of the steps, each
coordinate recorded in the report, several compared side by side on the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from idglow.cli import main

COORDINATES = ("sigma", "one_minus_sigma", "step_fraction")
STEPS = 10


def run_eval(capsys, out, *args):
    code = main(["eval", "--no-progress", "--bootstrap", "50", "--benchmark", "fusion", "--limit", "1",
                 "--steps", str(STEPS), "--window", "0.3", "0.6", "--out", str(out), *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads((out / "report.json").read_text()), captured.out


def test_three_coordinates_select_different_steps_side_by_side(tmp_path, capsys):
    out = tmp_path / "compare"
    report, stdout = run_eval(capsys, out, "--configs", "always_on,idglow",
                              "--window-coordinate", ",".join(COORDINATES))
    runs = [f"idglow@{c}" for c in COORDINATES]
    assert report["configs"] == ["always_on", *runs]
    assert report["settings"]["window_coordinates"] == list(COORDINATES)
    assert report["window_coordinates"] == {"always_on": None, **{f"idglow@{c}": c for c in COORDINATES}}
    # always-on injects at every step: its σ are the schedule, in step order
    schedule = report["schedules"]["always_on"]["active_sigmas"]
    assert len(schedule) == STEPS
    active = {c: report["schedules"][f"idglow@{c}"]["active_sigmas"] for c in COORDINATES}
    assert active["sigma"] == [s for s in schedule if 0.3 <= s <= 0.6]
    assert active["one_minus_sigma"] == [s for s in schedule if 0.4 - 1e-6 <= s <= 0.7]
    assert active["step_fraction"] == schedule[3:7]  # steps i of 10 with i/10 in [0.3, 0.6]
    assert len({tuple(a) for a in active.values()}) == 3 and all(active.values())
    assert report["schedules"]["idglow@step_fraction"]["sigma_windows"][0]["sigma_hi"] > 0.6
    # the coordinate reached the pipeline: the images differ
    row = report["cases"][0]
    images = [np.asarray(Image.open(out / "cases" / row["id"] / row["results"][r]["images"][0]), dtype=np.int16)
              for r in runs]
    assert np.abs(images[0] - images[2]).max() > 0 and np.abs(images[1] - images[2]).max() > 0
    assert set(report["differences"]) >= {"idglow@one_minus_sigma-idglow@sigma", "idglow@step_fraction-idglow@sigma",
                                          "idglow@sigma-always_on"}
    markdown = (out / "report.md").read_text()
    assert "| step_fraction | 4 (σ" in markdown and "| sigma | 2 (σ" in markdown
    assert "idglow@step_fraction" in stdout
    # a rerun reuses every image: each coordinate has its own cache key
    again, stdout = run_eval(capsys, out, "--configs", "always_on,idglow", "--window-coordinate", ",".join(COORDINATES))
    assert "generated 0, cached 4" in stdout
    assert again["schedules"] == report["schedules"]


def test_one_coordinate_keeps_the_configuration_names_and_records_it(tmp_path, capsys):
    report, _ = run_eval(capsys, tmp_path / "one", "--configs", "idglow", "--window-coordinate", "step_fraction")
    assert report["configs"] == ["idglow"]
    assert report["window_coordinates"] == {"idglow": "step_fraction"}
    assert report["settings"]["window_coordinates"] == ["step_fraction"]
    assert report["cases"][0]["results"]["idglow"]["schedule"]["window_coordinate"] == "step_fraction"
    assert report["schedules"]["idglow"]["active_steps"] == 4


def test_default_coordinate_is_sigma(tmp_path, capsys):
    report, _ = run_eval(capsys, tmp_path / "default", "--configs", "idglow")
    assert report["window_coordinates"] == {"idglow": "sigma"}
    assert all(0.3 <= s <= 0.6 for s in report["schedules"]["idglow"]["active_sigmas"])


@pytest.mark.parametrize("value", ["t", "sigma,sigma", ""])
def test_bad_window_coordinates_are_refused(tmp_path, capsys, value):
    with pytest.raises(SystemExit):
        main(["eval", "--benchmark", "fusion", "--out", str(tmp_path), "--window-coordinate", value])
    err = capsys.readouterr().err
    assert "--window-coordinate" in err or "window coordinates" in err
