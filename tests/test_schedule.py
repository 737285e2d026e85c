import numpy as np
import pytest
import torch

from idglow.schedule import IdentityWindow, linear_decay_weight, window_for_task


def test_hard_window_gate():
    w = IdentityWindow(0.3, 0.6)
    assert [w.gate(s) for s in (0.0, 0.29, 0.3, 0.45, 0.6, 0.61, 1.0)] == [0, 0, 1, 1, 1, 0, 0]
    assert not w.always_on
    assert IdentityWindow().always_on


def test_ramped_window_rises_and_falls_linearly():
    w = IdentityWindow(0.3, 0.6, ramp=0.1)
    assert w.gate(0.25) == pytest.approx(0.5)
    assert w.gate(0.65) == pytest.approx(0.5)
    assert w.gate(0.2) == 0.0 and w.gate(0.7) == 0.0
    np.testing.assert_allclose(w.gates([0.15, 0.25, 0.5, 0.65, 0.75]), [0, 0.5, 1, 0.5, 0])


@pytest.mark.parametrize("lo,hi", [(-0.1, 0.5), (0.2, 1.5), (0.7, 0.3)])
def test_invalid_windows_name_the_bad_value(lo, hi):
    with pytest.raises(ValueError, match="sigma_"):
        IdentityWindow(lo, hi)


def test_task_presets():
    assert window_for_task("fusion") == IdentityWindow(0.0, 1.0)
    assert window_for_task("age") == IdentityWindow(0.3, 0.6)
    with pytest.raises(ValueError, match="unknown task 'swap'"):
        window_for_task("swap")


def test_linear_decay_weight_endpoints_and_types():
    assert linear_decay_weight(0.0) == pytest.approx(1.0)
    assert linear_decay_weight(1.0) == pytest.approx(0.1)
    assert linear_decay_weight(0.5, w_clean=2.0, w_noisy=0.0) == pytest.approx(1.0)
    t = linear_decay_weight(torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(t, torch.tensor([1.0, 0.55, 0.1]))


def test_linear_profile_decays_from_the_clean_edge_to_the_noisy_edge():
    w = IdentityWindow(0.3, 0.6, profile="linear")
    np.testing.assert_allclose(w.gates([0.2, 0.3, 0.45, 0.6, 0.7]), [0, 1, 0.5, 0, 0])
    ramped = IdentityWindow(0.3, 0.6, ramp=0.1, profile="linear")
    assert ramped.gate(0.25) == pytest.approx(0.5)  # the ramp fades from the edge's strength
    assert ramped.gate(0.65) == 0.0
    assert not IdentityWindow(profile="linear").always_on
    assert IdentityWindow(profile="linear").gate(0.25) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="profile 'cosine'"):
        IdentityWindow(profile="cosine")


def test_float32_sigma_on_a_window_edge_counts_as_inside():
    sigma = float(torch.tensor(0.6, dtype=torch.float32))  # 0.6000000238
    assert sigma > 0.6
    assert IdentityWindow(0.3, 0.6).gate(sigma) == 1.0
    assert IdentityWindow(0.3, 0.6).gate(0.6001) == 0.0


def test_slot_windows_per_person():
    from idglow.schedule import slot_windows

    age, fusion = window_for_task("age"), window_for_task("fusion")
    assert slot_windows("age", [6.0, None]) == [age, fusion]
    assert slot_windows("fusion", [6.0, None]) == [fusion, fusion]
    custom = IdentityWindow(0.2, 0.5)
    assert slot_windows("age", [6.0, None], custom) == [custom, fusion]
    linear = slot_windows("age", [6.0, None], profile="linear")
    assert [w.profile for w in linear] == ["linear", "linear"]
