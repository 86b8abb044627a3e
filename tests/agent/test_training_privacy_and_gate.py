"""The zCDP accountant, the clip + noise mechanism, and the gate's decisions, with numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ftlct.agent.privacy import mechanism as privacy
from ftlct.agent.training.gate import judge_head


def test_the_gaussian_mechanism_costs_one_over_two_z_squared_and_composes_in_rho():
    assert privacy.rho_per_release(1.0) == 0.5
    assert privacy.rho_per_release(2.0) == 0.125
    # rho-zCDP -> (rho + 2 sqrt(rho ln(1/delta)), delta)-DP, by hand for rho = 0.5, delta = 1e-5
    assert privacy.epsilon_of(0.5, 1e-5) == pytest.approx(0.5 + 2 * math.sqrt(0.5 * math.log(1e5)))
    assert privacy.epsilon_of(0.0, 1e-5) == 0.0
    budget = privacy.Budget(rho_spent=0.5, delta=1e-5, epsilon_limit=7.0)
    assert budget.epsilon_spent == pytest.approx(5.2985, abs=1e-3)
    assert budget.epsilon_after(0.5) == pytest.approx(1.0 + 2 * math.sqrt(math.log(1e5)))
    assert not budget.allows(0.5)  # 7.79 > 7
    assert privacy.Budget(0.5, 1e-5, 0.0).allows(100.0)  # 0: no limit
    with pytest.raises(ValueError):
        privacy.rho_per_release(0.0)


def test_clipping_bounds_the_joint_norm_and_noise_has_the_configured_std():
    delta = {"a": np.full((3, 4), 1.0, np.float32), "b": np.full(4, 1.0, np.float32)}  # norm 4
    clipped, before = privacy.clip_l2(delta, 1.0)
    assert before == pytest.approx(4.0) and privacy.l2_norm(clipped) == pytest.approx(1.0)
    np.testing.assert_allclose(clipped["a"], 0.25)
    small, _ = privacy.clip_l2(clipped, 10.0)
    np.testing.assert_allclose(small["b"], clipped["b"])  # within the bound: unchanged
    big = {"w": np.zeros((200, 500), np.float32)}
    noisy = privacy.add_gaussian_noise(big, 0.3, np.random.default_rng(0))
    assert noisy["w"].std() == pytest.approx(0.3, rel=0.02) and noisy["w"].dtype == np.float32


def _data():
    rng = np.random.default_rng(1)
    labels = np.array([0] * 10 + [1] * 10)
    vectors = rng.normal(0, 0.1, (20, 2)).astype(np.float32)
    vectors[:, 0] += np.where(labels == 1, 1.0, -1.0)
    good = {
        "dense.0.weight": np.array([[-1, 0], [1, 0]], np.float32),
        "dense.0.bias": np.zeros(2, np.float32),
    }
    swapped = {k: v[::-1].copy() for k, v in good.items()}
    return vectors, labels, good, swapped


def test_a_head_that_drops_local_f1_is_refused_and_a_better_one_accepted():
    vectors, labels, good, swapped = _data()
    refused = judge_head(good, swapped, vectors, labels, 2, max_drop=0.05, min_samples=10)
    assert not refused.accepted and refused.f1_current == 1.0 and refused.f1_candidate == 0.0
    assert "drop from 1.000 to 0.000" in refused.reason
    accepted = judge_head(swapped, good, vectors, labels, 2, max_drop=0.05, min_samples=10)
    assert accepted.accepted and accepted.f1_candidate == 1.0 and accepted.n_val == 20


def test_without_enough_held_out_slices_the_gate_lets_the_head_through_and_says_so():
    vectors, labels, good, swapped = _data()
    result = judge_head(good, swapped, vectors[:4], labels[:4], 2, max_drop=0.05, min_samples=10)
    assert result.accepted and result.reason.startswith("not gated: 4 held-out slices")
