"""`idglow generate --window-coordinate`: the flag reaches the pipeline and the sidecar records it."""

from __future__ import annotations

import json

import pytest

from idglow.cli import main


def _sidecar(tmp_path, capsys, portraits, *flags) -> dict:
    out = tmp_path / "-".join(flags or ("default",))
    code = main(["generate", "--subject", str(portraits["person1"]), "--subject", str(portraits["person2"]),
                 "--task", "age", "--target-age", "6", "--target-age", "7", "--seed", "4", "--steps", "10",
                 "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 0, err
    return json.loads((out / "idglow_4.json").read_text())


def test_window_coordinate_flag_is_used_and_recorded(tmp_path, capsys, sample_portraits):
    default = _sidecar(tmp_path, capsys, sample_portraits)
    fraction = _sidecar(tmp_path, capsys, sample_portraits, "--window-coordinate", "step_fraction")
    assert default["params"]["window_coordinate"] == "sigma"
    assert fraction["params"]["window_coordinate"] == "step_fraction"
    assert default["active_sigmas"] and fraction["active_sigmas"]
    assert default["active_sigmas"] != fraction["active_sigmas"]
    assert all(0.3 <= s <= 0.6 + 1e-6 for s in default["active_sigmas"])
    assert fraction["params"]["sigma_windows"][0]["sigma_hi"] > 0.6


def test_unknown_window_coordinate_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--subject", "a.jpg", "--out", "x", "--window-coordinate", "t"])
    assert "invalid choice: 't'" in capsys.readouterr().err
