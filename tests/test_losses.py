import math

import pytest
import torch
import torch.nn.functional as F

from idglow.losses import (
    DPO_DIMENSIONS,
    add_flow_noise,
    flow_target,
    group_dpo_loss,
    orient_pairs,
    region_errors,
    region_mse,
    sft_loss,
)
from idglow.schedule import identity_constraint_weight


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_flow_noise_and_target_follow_the_flux_convention():
    x0 = torch.randn(2, 5, 4, generator=_g())
    eps = torch.randn(2, 5, 4, generator=_g(1))
    sig = torch.tensor([0.0, 1.0])
    xs = add_flow_noise(x0, eps, sig)
    torch.testing.assert_close(xs[0], x0[0])
    torch.testing.assert_close(xs[1], eps[1])
    torch.testing.assert_close(flow_target(x0, eps), eps - x0)


def test_sft_perfect_prediction_is_zero():
    v = torch.randn(3, 16, 8, generator=_g())
    mask = torch.zeros(3, 16, 1)
    mask[:, 2:6] = 1
    out = sft_loss(v.clone(), v, torch.tensor([0.1, 0.5, 0.9]), mask, face_lambda=2.0)
    assert out.loss.item() == 0.0


def test_sft_face_term_uses_the_identity_constraint_decay():
    pred = torch.zeros(2, 4, 1)
    target = torch.zeros(2, 4, 1)
    target[:, 0] = 2.0  # error 4 on token 0 only
    mask = torch.zeros(2, 4, 1)
    mask[:, 0] = 1
    sig = torch.tensor([0.0, 1.0])
    out = sft_loss(pred, target, sig, mask, face_lambda=0.5, w_clean=1.0, w_noisy=0.1)
    base = 4.0 / 4
    face = 4.0
    w = identity_constraint_weight(sig, 1.0, 0.1)
    expected = ((base + 0.5 * w * face).mean()).item()
    assert out.loss.item() == pytest.approx(expected)
    assert out.face_weight.tolist() == pytest.approx([0.5, 0.05])
    gated = sft_loss(pred, target, sig, mask, face_lambda=0.5, face_gate=torch.tensor([0.0, 1.0]))
    assert gated.loss.item() == pytest.approx((base + (base + 0.5 * 0.1 * face)) / 2)
    flat = sft_loss(pred, target, sig, mask, face_lambda=0.5, w_clean=1.0, w_noisy=0.1, decay="flat")
    assert flat.face_weight.tolist() == pytest.approx([0.5, 0.5])  # the ablation: no decay toward noise
    assert flat.loss.item() == pytest.approx(base + 0.5 * face)


def test_sft_rejects_bad_sigma_shape():
    with pytest.raises(ValueError, match="sigmas"):
        sft_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))


def test_region_mse_and_region_errors_agree():
    pred = torch.randn(2, 6, 3, generator=_g())
    target = torch.randn(2, 6, 3, generator=_g(1))
    masks = torch.zeros(2, 2, 6)
    masks[:, 0] = 1
    masks[0, 1, 1:3] = 1  # sample 1 has an empty second region
    errs = region_errors(pred, target, masks)
    torch.testing.assert_close(errs[:, 0], region_mse(pred, target))
    torch.testing.assert_close(errs[0, 1], ((pred[0, 1:3] - target[0, 1:3]) ** 2).mean())
    assert errs[1, 1].item() == 0.0


def _errs(b=4, d=len(DPO_DIMENSIONS), seed=0):
    g = _g(seed)
    return [torch.rand(b, d, generator=g) for _ in range(4)]


def test_dpo_policy_equals_reference_gives_log2_per_dimension():
    pw, pl, _, _ = _errs()
    alpha = torch.ones_like(pw)
    out = group_dpo_loss(pw, pl, pw.clone(), pl.clone(), alpha, 1.0, beta=500.0, gamma=0.0)
    assert out.loss.item() == pytest.approx(math.log(2))
    torch.testing.assert_close(out.per_dimension["loss"], torch.full((pw.shape[1],), math.log(2)))


@pytest.mark.parametrize("gamma,strength", [(1.0, 1.0), (2.0, 0.5), (3.0, torch.tensor([[0.5], [1.0]]))])
def test_dpo_margin_at_reference(gamma, strength):
    pw, pl, _, _ = _errs(b=2, d=3)
    out = group_dpo_loss(pw, pl, pw, pl, torch.ones_like(pw), strength, beta=10.0, gamma=gamma)
    s = torch.broadcast_to(torch.as_tensor(strength, dtype=torch.float32), pw.shape)
    expected = (-F.logsigmoid(-gamma * s)).mean()
    assert out.loss.item() == pytest.approx(expected.item())
    if not isinstance(strength, torch.Tensor):
        assert out.loss.item() == pytest.approx(-math.log(torch.sigmoid(torch.tensor(-gamma * strength)).item()))


def _plain_diffusion_dpo(model_w, model_l, ref_w, ref_l, beta):
    """Diffusion-DPO (Wallace et al.) in velocity form, per-pair MSE, β without ½."""
    model_diff = model_w - model_l
    ref_diff = ref_w - ref_l
    inside = -beta * (model_diff - ref_diff)
    return -F.logsigmoid(inside).mean()


def test_dpo_overall_only_equals_plain_diffusion_dpo():
    g = _g(3)
    pred_w, pred_l, ref_pred_w, ref_pred_l, tgt_w, tgt_l = (torch.randn(5, 16, 4, generator=g) for _ in range(6))
    mse = lambda a, b: ((a - b) ** 2).mean(dim=(1, 2))  # noqa: E731
    mw, ml, rw, rl = mse(pred_w, tgt_w), mse(pred_l, tgt_l), mse(ref_pred_w, tgt_w), mse(ref_pred_l, tgt_l)
    plain = _plain_diffusion_dpo(mw, ml, rw, rl, beta=2.5)

    d = len(DPO_DIMENSIONS)
    ones = torch.ones(5, 1, 16)
    masks = torch.cat([ones, torch.zeros(5, d - 1, 16)], dim=1)
    ew = region_errors(pred_w, tgt_w, masks)
    el = region_errors(pred_l, tgt_l, masks)
    rew = region_errors(ref_pred_w, tgt_w, masks)
    rel = region_errors(ref_pred_l, tgt_l, masks)
    alpha = torch.zeros(5, d)
    alpha[:, 0] = 1.0
    out = group_dpo_loss(ew, el, rew, rel, alpha, torch.rand(5, d, generator=g), beta=2.5, gamma=0.0)
    assert out.loss.item() == pytest.approx(plain.item(), rel=1e-6)
    assert out.per_dimension["count"][1:].sum() == 0
    assert torch.isnan(out.per_dimension["accuracy"][1]).item()


def test_loser_better_dimension_flips():
    e0 = torch.tensor([[0.2, 0.5]])
    e1 = torch.tensor([[0.6, 0.1]])
    r0 = torch.tensor([[0.4, 0.4]])
    r1 = torch.tensor([[0.4, 0.4]])
    # image 0 preferred overall; image 1 preferred on the second dimension
    pref = torch.tensor([[1, -1]])
    pw, pl, lab = orient_pairs(e0, e1, pref)
    rw, rl, _ = orient_pairs(r0, r1, pref)
    assert pw.tolist() == [[pytest.approx(0.2), pytest.approx(0.1)]]
    out = group_dpo_loss(pw, pl, rw, rl, lab, 0.0, beta=1.0, gamma=0.0)
    # both dimensions: the preferred side has lower policy error → reward correct on both
    assert out.reward_accuracy.item() == 1.0
    # without flipping, the second dimension would count as wrong
    wrong = group_dpo_loss(e0, e1, r0, r1, torch.ones(1, 2), 0.0, beta=1.0, gamma=0.0)
    assert wrong.reward_accuracy.item() == 0.5
    assert out.loss.item() < wrong.loss.item()


def test_ties_contribute_nothing():
    pw, pl, rw, rl = _errs(b=3, d=4, seed=5)
    alpha = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
    out = group_dpo_loss(pw, pl, rw, rl, alpha, 1.0, beta=3.0, gamma=0.5)
    # changing the errors on tied entries or the all-tie pair changes nothing
    pw2 = pw.clone()
    pw2[alpha == 0] += 10.0
    out2 = group_dpo_loss(pw2, pl, rw, rl, alpha, 1.0, beta=3.0, gamma=0.5)
    assert out.loss.item() == pytest.approx(out2.loss.item())
    # and equals the mean over the two labelled pairs only
    keep = alpha[[0, 2]]
    out3 = group_dpo_loss(pw[[0, 2]], pl[[0, 2]], rw[[0, 2]], rl[[0, 2]], keep, 1.0, beta=3.0, gamma=0.5)
    assert out.loss.item() == pytest.approx(out3.loss.item())
    # an all-tie batch still backpropagates (zero grad)
    x = pw.clone().requires_grad_()
    z = group_dpo_loss(x, pl, rw, rl, torch.zeros_like(alpha), 1.0, beta=3.0, gamma=0.5)
    z.loss.backward()
    assert z.loss.item() == 0.0 and x.grad.abs().sum() == 0


def test_alpha_weights_normalise():
    pw, pl, rw, rl = _errs(b=2, d=3, seed=7)
    alpha = torch.tensor([[1.0, 2.0, 0.5], [0.3, 0.0, 1.0]])
    a = group_dpo_loss(pw, pl, rw, rl, alpha, 0.5, beta=2.0, gamma=1.0)
    b = group_dpo_loss(pw, pl, rw, rl, alpha * 7.0, 0.5, beta=2.0, gamma=1.0)
    assert a.loss.item() == pytest.approx(b.loss.item())
    ell = -F.logsigmoid(-2.0 * ((pw - rw) - (pl - rl)) - 0.5)
    expected = ((alpha * ell).sum(1) / alpha.sum(1)).mean()
    assert a.loss.item() == pytest.approx(expected.item())


def test_identity_dimension_uses_each_persons_region_in_each_image():
    # two images of 8 tokens; person 0 sits at tokens 0-1 in image w and at tokens 6-7 in image l
    L = 8
    tgt = torch.zeros(1, L, 2)
    pred_w = torch.zeros(1, L, 2)
    pred_l = torch.zeros(1, L, 2)
    pred_w[0, 0:2] = 1.0  # error where person 0 is in w
    pred_l[0, 6:8] = 3.0  # error where person 0 is in l
    pred_l[0, 0:2] = 100.0  # large error elsewhere in l must not count for identity_0
    mask_w = torch.zeros(1, 1, L)
    mask_w[0, 0, 0:2] = 1
    mask_l = torch.zeros(1, 1, L)
    mask_l[0, 0, 6:8] = 1
    ew = region_errors(pred_w, tgt, mask_w)
    el = region_errors(pred_l, tgt, mask_l)
    assert ew.item() == pytest.approx(1.0) and el.item() == pytest.approx(9.0)
    out = group_dpo_loss(ew, el, torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), 0.0, beta=0.1, gamma=0.0)
    assert out.loss.item() == pytest.approx(-F.logsigmoid(torch.tensor(-0.1 * (1.0 - 9.0))).item())


def test_dpo_input_validation():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="err_ref_l"):
        group_dpo_loss(z, z, z, torch.zeros(2, 2), z, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="beta"):
        group_dpo_loss(z, z, z, z, z, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        group_dpo_loss(z, z, z, z, -torch.ones(2, 3), 1.0, 1.0, 0.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dpo_loss_refuses_low_precision_errors(dtype):
    e = torch.rand(2, 3, generator=_g())
    low = e.to(dtype)
    with pytest.raises(TypeError, match=f"err_ref_l is {dtype}.*float32"):
        group_dpo_loss(e, e, e, low, torch.ones(2, 3), 1.0, beta=5000.0, gamma=0.0)
    with pytest.raises(TypeError, match="err_policy_w"):
        group_dpo_loss(low, e, e, e, torch.ones(2, 3), 1.0, beta=5000.0, gamma=0.0)


def test_region_errors_stay_float32_under_autocast():
    """Mixed-precision training calls the loss inside autocast, where einsum would run in bf16."""
    pred = torch.randn(2, 16, 4, generator=_g())
    target = torch.randn(2, 16, 4, generator=_g(1))
    masks = (torch.rand(2, 3, 16, generator=_g(2)) > 0.5).float()
    exact = region_errors(pred, target, masks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = region_errors(pred.bfloat16(), target, masks)
        whole = region_mse(pred, target, masks[:, :1].transpose(1, 2))
        out = group_dpo_loss(mixed, mixed.flip(0), mixed, mixed.flip(0), torch.ones(2, 3), 1.0, beta=10.0,
                             gamma=0.0)
    assert mixed.dtype == torch.float32 and whole.dtype == torch.float32 and out.loss.dtype == torch.float32
    torch.testing.assert_close(mixed, region_errors(pred.bfloat16(), target, masks))
    torch.testing.assert_close(whole, region_mse(pred, target, masks[:, :1].transpose(1, 2)))
    assert (mixed - exact).abs().max() < 0.05  # only the bf16 rounding of pred itself


def test_dpo_gradient_step_lowers_the_winners_error_relative_to_the_losers():
    """One gradient step on the policy's predictions lowers e_θ(w) − e_θ(l) on every labelled dimension, and
    leaves a tie's region untouched."""
    b, length, c, d = 3, 12, 4, 3
    target_w = torch.randn(b, length, c, generator=_g(1))
    target_l = torch.randn(b, length, c, generator=_g(2))
    ref_w = target_w + 0.3 * torch.randn(b, length, c, generator=_g(3))
    ref_l = target_l + 0.3 * torch.randn(b, length, c, generator=_g(4))
    masks = torch.zeros(b, d, length)
    masks[:, 0] = 1.0
    masks[:, 1, :4] = 1.0
    masks[:, 2, 8:] = 1.0
    alpha = torch.tensor([[1.0, 1.0, 0.0]] * b)  # dimension 2 is a tie
    pred_w = ref_w.clone().requires_grad_(True)
    pred_l = ref_l.clone().requires_grad_(True)

    def errors():
        return region_errors(pred_w, target_w, masks), region_errors(pred_l, target_l, masks)

    e_w, e_l = errors()
    out = group_dpo_loss(e_w, e_l, region_errors(ref_w, target_w, masks), region_errors(ref_l, target_l, masks),
                         alpha, 1.0, beta=50.0, gamma=0.0)
    out.loss.backward()
    tie_tokens = masks[:, 2].bool() & ~masks[:, 1].bool()
    assert pred_w.grad[tie_tokens].abs().max() > 0  # the tie's tokens still belong to "overall"
    with torch.no_grad():
        before = (e_w - e_l).detach()
        pred_w -= 1e-2 * pred_w.grad
        pred_l -= 1e-2 * pred_l.grad
        new_w, new_l = errors()
    after = new_w - new_l
    assert (after[:, :2] < before[:, :2]).all()
    assert (new_w[:, 0] < e_w.detach()[:, 0]).all() and (new_l[:, 0] > e_l.detach()[:, 0]).all()
    # A dimension alone: its gradient only reaches its own region.
    pred_w.grad = None
    only_tie = group_dpo_loss(*errors(), region_errors(ref_w, target_w, masks),
                              region_errors(ref_l, target_l, masks), torch.tensor([[0.0, 0.0, 1.0]] * b), 1.0,
                              beta=50.0, gamma=0.0)
    only_tie.loss.backward()
    assert pred_w.grad[:, :8].abs().max() == 0 and pred_w.grad[:, 8:].abs().max() > 0
