"""fastface.eval.stats: the bootstrap interval against hand values."""
import numpy as np

from fastface.eval.stats import bootstrap_ci


def test_bootstrap_interval_hand_values():
    assert bootstrap_ci([0.4] * 5) == (0.4, 0.4)
    # n = 2: resampled means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4 → 2.5 % and 97.5 % at 0 and 1
    assert bootstrap_ci([0.0, 1.0], n_boot=20000) == (0.0, 1.0)
    # n = 3, one 1: P(mean 0) = 8/27 > 2.5 %, P(mean 1) = 1/27 > 2.5 %
    assert bootstrap_ci([0.0, 0.0, 1.0], n_boot=20000) == (0.0, 1.0)
    lo, hi = bootstrap_ci(list(np.linspace(0, 1, 200)), n_boot=4000)
    assert 0.45 < lo < 0.5 < hi < 0.55  # ≈ mean ± 1.96·σ/√n = 0.5 ± 0.040

