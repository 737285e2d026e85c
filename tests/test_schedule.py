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
