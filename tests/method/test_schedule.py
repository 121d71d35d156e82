import pytest
import torch
from hypothesis import given, strategies as st

from fastface.method.guidance import dcg_eps
from fastface.presets import PRESETS
from fastface.method.schedule import (Branches, alpha_beta, branches_needed, rescale_phi, rows_per_image,
                               softmask_params)

from strategies import valid_args

REAL = PRESETS["Realistic"]


def schedule(total, args):
    return [alpha_beta(k, total, args) for k in range(total)]


# The cases documented in fastface/method/schedule.py.
@pytest.mark.parametrize("total,alphas,betas", [
    (1, [1], [1]),
    (2, [1, 1], [1, 1]),
    (3, [1, 1.5, 1], [1, 3, 1]),
    (4, [1, 1.5, 1.5, 1], [1, 3, 3, 1]),
    (8, [1] + [1.5] * 6 + [1], [1] + [3] * 6 + [1]),
])
def test_intermediate_schedule(total, alphas, betas):
    assert schedule(total, REAL) == list(zip(map(float, alphas), map(float, betas)))


@pytest.mark.parametrize("total,alphas,betas", [
    (1, [1], [1]),
    (2, [1, 1.5], [1, 3]),             # the authors' code boosts the last of 2 steps
    (3, [1, 1.5, 1.5], [1, 3, 3]),
    (4, [1, 1.5, 1.5, 1], [1, 3, 3, 1]),
    (8, [1, 1.5, 1.5, 1, 1, 1, 1, 1], [1, 3, 3, 1, 1, 1, 1, 1]),  # last entry repeated, no IndexError
])
def test_reference_schedule(total, alphas, betas):
    args = REAL.replace(schedule="reference")
    assert schedule(total, args) == list(zip(map(float, alphas), map(float, betas)))


def test_peaks_drive_both_modes():
    args = REAL.replace(alpha_peak=2.0, beta_peak=5.0)
    assert alpha_beta(1, 4, args) == (2.0, 5.0)
    assert alpha_beta(1, 4, args.replace(schedule="reference")) == (2.0, 5.0)


def test_custom_schedule_repeats_the_last_entry():
    args = REAL.replace(schedule="custom", alpha_custom=(1.0, 2.0), beta_custom=(0.5,))
    assert schedule(4, args) == [(1.0, 0.5), (2.0, 0.5), (2.0, 0.5), (2.0, 0.5)]


@pytest.mark.parametrize("step,total", [(-1, 4), (4, 4), (0, 0)])
def test_bad_steps_raise(step, total):
    with pytest.raises(ValueError):
        alpha_beta(step, total, REAL)


def test_softmask_schedule_first_and_later_steps():
    assert softmask_params(0, 4, REAL) == (7.5, 1.0)
    assert [softmask_params(k, 8, REAL) for k in range(1, 8)] == [(5.0, 1.55)] * 7
    assert softmask_params(0, 1, REAL) == (7.5, 1.0)


# Rows per image per step: boosted steps need all three branches; with rescale on every step
# (the authors' default) the others need id-only + full; with rescale on boosted steps only, full.
@pytest.mark.parametrize("total,rows_all,rows_boosted", [
    (1, [2], [1]),
    (2, [2, 2], [1, 1]),
    (3, [2, 3, 2], [1, 3, 1]),
    (4, [2, 3, 3, 2], [1, 3, 3, 1]),
    (8, [2] + [3] * 6 + [2], [1] + [3] * 6 + [1]),
])
def test_rows_per_image(total, rows_all, rows_boosted):
    assert rows_per_image(total, REAL) == rows_all
    assert rows_per_image(total, REAL.replace(rescale_steps="boosted")) == rows_boosted
    assert rows_per_image(total, REAL.replace(phi=0.0)) == rows_boosted


def test_branches_with_dcg_off_are_the_hosts_cfg():
    for args in (PRESETS["Off"], PRESETS["Scale-power only"], REAL.replace(enabled=False)):
        assert branches_needed(1, 4, args) == Branches(uncond=True, id_only=False, full=True)


def test_rescale_phi_per_step():
    assert [rescale_phi(k, 4, REAL) for k in range(4)] == [0.75] * 4
    boosted = REAL.replace(rescale_steps="boosted")
    assert [rescale_phi(k, 4, boosted) for k in range(4)] == [0.0, 0.75, 0.75, 0.0]


@given(valid_args.map(lambda a: a.replace(enabled=True, dcg=True)),
       st.integers(1, 150).flatmap(lambda n: st.tuples(st.integers(0, n - 1), st.just(n))))
def test_branches_not_needed_do_not_change_the_result(args, step_total):
    """Replace every branch that branches_needed says is unused with garbage: same ε̂."""
    step, total = step_total
    alpha, beta = alpha_beta(step, total, args)
    phi = rescale_phi(step, total, args)
    need = branches_needed(step, total, args)
    gen = torch.Generator().manual_seed(step * 1000 + total)
    u, e_id, e_full = (torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    reference = dcg_eps(u, e_id, e_full, alpha, beta, phi)
    garbage = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64) * 1e3
    result = dcg_eps(u if need.uncond else garbage, e_id if need.id_only else garbage,
                     e_full if need.full else garbage, alpha, beta, phi)
    torch.testing.assert_close(result, reference, rtol=1e-9, atol=1e-9)
    assert need.rows_per_image >= 1
