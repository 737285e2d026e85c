import numpy as np
import pytest
import torch

from idglow.schedule import IdentityWindow, identity_constraint_weight, window_for_task


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


def test_identity_constraint_weight_endpoints_types_and_flat_ablation():
    assert identity_constraint_weight(0.0) == pytest.approx(1.0)
    assert identity_constraint_weight(1.0) == pytest.approx(0.1)
    assert identity_constraint_weight(0.5, w_clean=2.0, w_noisy=0.0) == pytest.approx(1.0)
    t = identity_constraint_weight(torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(t, torch.tensor([1.0, 0.55, 0.1]))
    flat = identity_constraint_weight(torch.tensor([0.0, 0.5, 1.0]), decay="flat")
    torch.testing.assert_close(flat, torch.tensor([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="identity_decay 'cosine'"):
        identity_constraint_weight(0.5, decay="cosine")


def test_linear_profile_is_a_continuous_fade_from_the_clean_side_to_the_noisy_edge():
    w = IdentityWindow(0.3, 0.6, profile="linear")
    np.testing.assert_allclose(w.gates([0.0, 0.2, 0.3, 0.45, 0.6, 0.7]), [1, 1, 1, 0.5, 0, 0])
    grid = np.linspace(0.0, 1.0, 2001)
    assert np.abs(np.diff(w.gates(grid))).max() <= (grid[1] - grid[0]) / 0.3 + 1e-9  # no jump anywhere
    assert IdentityWindow(0.3, 0.6, ramp=0.1, profile="linear").gate(0.25) == 1.0  # continuous: ramp unused
    assert not IdentityWindow(profile="linear").always_on
    assert IdentityWindow(profile="linear").gate(0.25) == pytest.approx(0.75)
    flat = IdentityWindow(0.3, 0.6)
    assert np.abs(np.diff(flat.gates(grid))).max() == 1.0  # the hard window is the one that jumps
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
    assert slot_windows("age", [None, None]) == [age, age]  # no target age named at all: everyone windowed
    linear = slot_windows("age", [6.0, None], profile="linear")
    assert [w.profile for w in linear] == ["linear", "linear"]


def test_the_three_window_coordinates_select_different_steps_of_a_flux_schedule():
    """FLUX.1-dev's scheduler at 1024², 28 steps: the window [0.3, 0.6] read as σ, as t = 1 − σ and as a
    fraction of the steps selects steps 19–24, 17–23 and 9–16; reading it as σ is the default."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from idglow.schedule import schedule_shift, sigma_window

    config = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
              "max_image_seq_len": 4096, "shift": 3.0}
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    steps, seq_len = 28, 64 * 64
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=calculate_shift(seq_len, 256, 4096, 0.5, 1.15))
    sigmas = scheduler.sigmas[:-1].to(torch.float32).numpy()
    shift = schedule_shift(scheduler.config, seq_len)
    window = IdentityWindow(0.3, 0.6)

    def selected(coordinate):
        return [i for i, g in enumerate(sigma_window(window, coordinate, shift).gates(sigmas)) if g > 0]

    assert selected("sigma") == list(range(19, 25))
    assert selected("one_minus_sigma") == list(range(17, 24))
    assert selected("step_fraction") == list(range(9, 17))
    assert [i for i in range(steps) if 0.3 <= i / steps <= 0.6] == selected("step_fraction")
    assert sigma_window(window) == window
    with pytest.raises(ValueError, match="window coordinate 'steps'"):
        sigma_window(window, "steps")
