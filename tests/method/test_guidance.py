import pytest
import torch
from hypothesis import given, strategies as st

from fastface.method.guidance import dcg_eps, dcg_x0, rescale_factor


def t(*values):
    return torch.tensor(values, dtype=torch.float64).reshape(1, 1, 1, -1)


def test_hand_computed_golden():
    # u=[0,2], id=[1,3], full=[3,1], α=1.5, β=3:
    # ε̂ = u + 1.5(id−u) + 3(full−id) = [7.5, −2.5]
    # unbiased std of 2 values = |a−b|/√2: σ_id = σ_full = √2, σ̂ = 10/√2
    # factor = 0.75·(2√2)/(2·10/√2) + 0.25 = 0.75·0.2 + 0.25 = 0.4  →  [3.0, −1.0]
    u, e_id, e_full = t(0, 2), t(1, 3), t(3, 1)
    torch.testing.assert_close(dcg_eps(u, e_id, e_full, 1.5, 3.0, 0.0), t(7.5, -2.5))
    torch.testing.assert_close(dcg_eps(u, e_id, e_full, 1.5, 3.0, 0.75), t(3.0, -1.0))


def test_std_is_unbiased_over_all_non_batch_dims_per_sample():
    a = torch.arange(24, dtype=torch.float64).reshape(2, 3, 2, 2)
    b = a * 2
    factor = rescale_factor(a, a, b, 1.0)  # (σ_a + σ_a)/(2σ_b) = 1/2 per sample
    assert factor.shape == (2, 1, 1, 1)
    torch.testing.assert_close(factor, torch.full((2, 1, 1, 1), 0.5, dtype=factor.dtype))


randn = st.integers(0, 2**31 - 1).map(lambda s: torch.Generator().manual_seed(s))


def three(gen, shape=(2, 4, 5, 5)):
    return [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3)]


@given(randn, st.floats(0.0, 15.0))
def test_equal_weights_are_ordinary_cfg(gen, w):
    u, e_id, e_full = three(gen)
    torch.testing.assert_close(dcg_eps(u, e_id, e_full, w, w, 0.0), u + w * (e_full - u))


@given(randn)
def test_alpha_beta_one_returns_the_full_branch(gen):
    u, e_id, e_full = three(gen)
    torch.testing.assert_close(dcg_eps(u, e_id, e_full, 1.0, 1.0, 0.0), e_full)


@given(randn, st.floats(-5, 5), st.floats(-5, 5), st.floats(0, 1))
def test_weights_sum_to_one(gen, alpha, beta, phi):
    c = torch.randn(1, 4, 3, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(dcg_eps(c, c, c, alpha, beta, phi), c)  # σ equal ⇒ factor 1


@given(randn, st.floats(0.0, 10.0), st.floats(0.0, 20.0), st.floats(0.0, 1.0))
def test_x0_space_agrees_with_eps_space(gen, alpha, beta, phi):
    eps = three(gen)
    x = torch.randn(2, 4, 5, 5, generator=gen, dtype=torch.float64) * 3
    sigma = torch.rand(2, generator=gen, dtype=torch.float64) * 14 + 0.03
    s = sigma.reshape(2, 1, 1, 1)
    x0s = [x - s * e for e in eps]
    expected = x - s * dcg_eps(*eps, alpha, beta, phi)
    torch.testing.assert_close(dcg_x0(x, sigma, *x0s, alpha, beta, phi), expected, rtol=1e-6, atol=1e-6)


def test_x0_scalar_sigma_and_zero_sigma():
    gen = torch.Generator().manual_seed(0)
    eps = three(gen, (1, 4, 2, 2))
    x = torch.randn(1, 4, 2, 2, generator=gen, dtype=torch.float64)
    x0s = [x - 2.0 * e for e in eps]
    torch.testing.assert_close(dcg_x0(x, 2.0, *x0s, 1.5, 3.0, 0.75),
                               x - 2.0 * dcg_eps(*eps, 1.5, 3.0, 0.75), rtol=1e-6, atol=1e-6)
    out = dcg_x0(x, 0.0, x, x, x, 1.5, 3.0, 0.75)  # σ = 0: ε undefined, result stays x₀ = x
    torch.testing.assert_close(out, x)


def test_zero_variance_prediction_is_not_rescaled_to_nan():
    z = torch.zeros(1, 4, 2, 2)
    out = dcg_eps(z, z, z + 1.0, 1.0, 1.0, 0.75)  # ε̂ constant ⇒ σ̂ = 0
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, z + 1.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtype_is_kept(dtype):
    u, e_id, e_full = (x.to(dtype) for x in three(torch.Generator().manual_seed(1)))
    assert dcg_eps(u, e_id, e_full, 1.5, 3.0, 0.75).dtype == dtype
    assert dcg_x0(u, 1.0, u, e_id, e_full, 1.5, 3.0, 0.75).dtype == dtype
