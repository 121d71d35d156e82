"""The AM transforms (`method.transforms`): scale-power, the softmask, AdaIN and `transform_for`, against
hand-computed values, a naive loop of the spec and property tests."""
import pytest
import torch
from hypothesis import given, strategies as st

from fastface.method.transforms import (ScalePower, adain_blend, minmax_norm, quantile_along, scale_power,
                                        softmask, transform_for)
from fastface.presets import PRESETS

from face_inputs import probs, seeds


# --- (b) scale-power ---------------------------------------------------------------------------
def test_scale_power_golden():
    a = torch.tensor([0.5, 0.25, 1.0, 0.0])
    torch.testing.assert_close(scale_power(a, 2.0, 2.0), torch.tensor([0.5, 0.125, 2.0, 0.0]))
    torch.testing.assert_close(scale_power(a, 30.0, 1.0), torch.tensor([10.0, 7.5, 10.0, 0.0]))  # clamp 10
    torch.testing.assert_close(scale_power(a, 30.0, 1.0, clamp_max=5.0), torch.tensor([5.0, 5.0, 5.0, 0.0]))


@given(seeds, st.floats(0, 5), st.floats(0.1, 5), st.floats(1, 100))
def test_scale_power_bounded_and_finite(seed, s, p, clamp):
    a = probs(seed)
    out = scale_power(a, s, p, clamp)
    assert torch.isfinite(out).all() and (out >= 0).all() and (out <= clamp).all()
    # monotone in A: the ordering of each row is kept (ties allowed)
    order = a.argsort(-1)
    assert (out.gather(-1, order).diff(dim=-1) >= -1e-6).all()


# --- (c) softmask --------------------------------------------------------------------------------
def test_quantile_matches_torch_quantile():
    x = torch.rand(3, 2, 37, 4)
    for q in (0.0, 0.3, 0.65, 1.0):
        torch.testing.assert_close(quantile_along(x, q, dim=2), torch.quantile(x, q, dim=2, keepdim=True))


def test_softmask_golden_hand_computed():
    # One row, head, token; L = 4 values 0.1..0.4, no inversion, a near-step sigmoid (d = 1e4):
    # q(0.5) = 0.25 (linear), norm = [0, 1/3, 2/3, 1], norm − q = [−.25, .083, .417, .75]
    # sigmoid → [0, 1, 1, 1], norm again → [0, 1, 1, 1], ×1.5 → [0, 1.5, 1.5, 1.5]
    a = torch.tensor([0.1, 0.2, 0.3, 0.4]).reshape(1, 1, 4, 1)
    out = softmask(a, quantile=0.5, d=1e4, s=1.5, invert_first=False)
    torch.testing.assert_close(out.flatten(), torch.tensor([0.0, 1.5, 1.5, 1.5]))


def test_softmask_golden_with_first_token_inversion():
    # Token 0 [0.9, 0.6, 0.8, 0.7] is inverted to [0.1, 0.4, 0.2, 0.3]: q(0.5) = 0.25,
    # norm = [0, 1, 1/3, 2/3] → step → [0, 1, 1, 1] → ×2 = [0, 2, 2, 2] → undo: max − M = [2, 0, 0, 0].
    # Token 1 (not inverted) [0.1, 0.4, 0.2, 0.3] → [0, 2, 2, 2].
    a = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.7, 0.3]]).reshape(1, 1, 4, 2)
    out = softmask(a, quantile=0.5, d=1e4, s=2.0, invert_first=True)
    torch.testing.assert_close(out[0, 0], torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [0.0, 2.0]]))


def naive_softmask(a, quantile, d, s, invert_first, clamp_max):
    """The spec §2.4 step by step with Python loops, pooling the whole call (the authors' norm)."""
    rows, heads, length, tokens = a.shape
    t = a.double().clone()
    if invert_first:
        t[..., 0] = 1 - t[..., 0]

    def norm(x):
        out = x.clone()
        for j in range(tokens):
            mn, mx = x[..., j].min(), x[..., j].max()
            out[..., j] = (x[..., j] - mn) / (mx - mn)
        return out

    q = torch.empty(rows, heads, 1, tokens, dtype=torch.float64)
    for r in range(rows):
        for h in range(heads):
            for j in range(tokens):
                q[r, h, 0, j] = max(torch.quantile(t[r, h, :, j], quantile).item(), 1e-6)
    m = norm(1 / (1 + torch.exp(-d * (norm(t) - q))))
    m = torch.clamp(s * m, max=clamp_max)
    if invert_first:
        m[..., 0] = m[..., 0].amax(dim=2, keepdim=True) - m[..., 0]
    return m


@pytest.mark.parametrize("invert", [True, False])
def test_softmask_matches_the_naive_spec(invert):
    a = probs(5, b=3, heads=2, length=20, tokens=4)
    expected = naive_softmask(a, 0.65, 5.0, 1.55, invert, 10.0)
    torch.testing.assert_close(softmask(a, 0.65, 5.0, 1.55, invert), expected.float(), rtol=1e-5, atol=1e-5)


def test_softmask_pooling_call_versus_per_image_groups():
    row, other = probs(6, b=1), probs(7, b=1, spread=0.3)
    alone = softmask(row, 0.65, 5.0, 1.55)
    a = torch.cat([row, other])
    per_image = softmask(a, 0.65, 5.0, 1.55, groups=torch.tensor([0, 1]))
    torch.testing.assert_close(per_image[:1], alone)  # image 1 is independent of image 2
    pooled = softmask(a, 0.65, 5.0, 1.55)
    assert not torch.allclose(pooled[:1], alone, atol=1e-3)  # whole-call pooling mixes them
    # groups = one id for every row is the same as pooling the call
    torch.testing.assert_close(softmask(a, 0.65, 5.0, 1.55, groups=torch.tensor([7, 7])), pooled)


def test_minmax_norm_constant_pool_is_zero_not_nan():
    x = torch.full((2, 1, 5, 3), 0.25)
    out = minmax_norm(x)
    assert torch.equal(out, torch.zeros_like(x))
    assert torch.isfinite(softmask(x, 0.65, 7.5, 1.0)).all()


@given(seeds, st.floats(0, 1), st.floats(0, 50), st.floats(0, 5), st.booleans(), st.floats(1, 100),
       st.floats(0.01, 30))


def test_softmask_finite_and_bounded(seed, quantile, d, s, invert, clamp, spread):
    a = probs(seed, spread=spread)
    out = softmask(a, quantile, d, s, invert, clamp)
    assert torch.isfinite(out).all()
    assert (out >= -1e-6).all() and (out <= clamp + 1e-6).all()


# --- (d) AdaIN ---------------------------------------------------------------------------------
def test_adain_golden():
    # x = [1, 2, 3] (μ 2, σ 1), ref = [10, 20, 30] (μ 20, σ 10): AdaIN(x) = (x − 2)/(1 + 1e-6)·10 + 20
    x, ref = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0, 20.0, 30.0]])
    ada = (x - 2) / (1 + 1e-6) * 10 + 20
    torch.testing.assert_close(adain_blend(x, ref, 0.7, dim=-1), 0.7 * x + 0.3 * ada)
    torch.testing.assert_close(adain_blend(x, ref, 0.0, dim=-1), ada)
    assert adain_blend(x, ref, 1.0, dim=-1) is x


def test_adain_statistics_axis():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 8.0, 6.0]])
    ref = torch.tensor([[5.0, 5.0, 5.0], [0.0, 1.0, 2.0]])
    out = adain_blend(x, ref, 0.0, dim=0)  # statistics down the columns
    torch.testing.assert_close(out.mean(0), ref.mean(0))


def test_adain_nan_guard_returns_input():
    x, ref = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    assert adain_blend(x, ref, 0.5, dim=-1) is x  # one element: std undefined
    big = torch.tensor([[1.0, 2.0]]) ; inf_ref = torch.tensor([[0.0, float("inf")]])
    assert adain_blend(big, inf_ref, 0.5, dim=-1) is big


def test_transform_for_parts_and_steps():
    real = PRESETS["Realistic"]
    assert transform_for(real, "down", 0, 4) == ScalePower(1.55, 1.3, 10.0)
    assert transform_for(real, "up", 3, 4) == ScalePower(1.45, 1.3, 10.0)
    assert transform_for(real, "mid", 1, 4) is None  # mid excluded by default
    assert transform_for(real.replace(am_mid=True), "mid", 1, 4) == ScalePower(1.0, 1.3, 10.0)
    assert transform_for(real.replace(am_down=False), "down", 1, 4) is None
    assert transform_for(PRESETS["Stylistic"], "down", 1, 4) is None
    assert transform_for(real.replace(enabled=False), "down", 1, 4) is None
    portrait = PRESETS["Realistic portrait"]
    first, later = transform_for(portrait, "up", 0, 4), transform_for(portrait, "up", 2, 4)
    assert (first.d, first.s, later.d, later.s) == (7.5, 1.0, 5.0, 1.55)
    assert first.adain == 0.7 and first.invert_first and first.output_adain == 0.7
