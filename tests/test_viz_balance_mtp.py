"""The notebook helpers of 04 (sign-rule simulation, seed averaging) and 05 (MTP token alignment)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch

from dsv3_edu.balance import max_violation
from dsv3_edu.balance_sim import simulate_sign_rule, skewed_scores
from dsv3_edu.experiments import mean_history
from dsv3_edu.viz.balance import plot_bias_spread, plot_sign_rule
from dsv3_edu.viz.mtp import alignment_table, mtp_alignment, plot_mtp_alignment


def test_skewed_scores_prefer_low_experts():
    s = skewed_scores(4096, 8, 2.0, torch.Generator().manual_seed(0))
    assert s.shape == (4096, 8) and bool(((s > 0) & (s < 1)).all())
    means = s.mean(0)
    assert bool((means[:-1] > means[1:]).all()), means          # monotone preference
    with pytest.raises(ValueError, match="n_experts"):
        skewed_scores(10, 1, 1.0, torch.Generator())


def test_sign_rule_moves_each_bias_by_exactly_gamma_and_balances():
    run = simulate_sign_rule(0.01, skew=1.0, steps=120, n_tokens=512, n_experts=8, top_k=2, seed=0)
    steps = torch.cat([run.bias[:1], run.bias[1:] - run.bias[:-1]])            # (steps, E) per-step moves
    loads = run.loads
    over = loads > loads.mean(-1, keepdim=True)
    under = loads < loads.mean(-1, keepdim=True)
    torch.testing.assert_close(steps[over], torch.full_like(steps[over], -0.01))   # overloaded: down by gamma
    torch.testing.assert_close(steps[under], torch.full_like(steps[under], 0.01))  # underloaded: up by gamma
    assert run.maxvio[0] > 0.5 and sum(run.maxvio[-20:]) / 20 < 0.3, run.maxvio[::20]
    # MaxVio is recorded from the loads of the same step
    assert run.maxvio[5] == pytest.approx(max_violation(loads[5]).item())


def test_sign_rule_gamma_zero_keeps_the_bias_and_the_imbalance():
    run = simulate_sign_rule(0.0, skew=1.0, steps=30, n_tokens=512, n_experts=8, top_k=2, seed=1)
    assert bool((run.bias == 0).all())
    assert min(run.maxvio) > 0.5
    with pytest.raises(ValueError, match="gamma"):
        simulate_sign_rule(-0.1)
    with pytest.raises(ValueError, match="steps"):
        simulate_sign_rule(0.01, steps=0)


def test_mean_history_averages_rows_of_seeds():
    h1 = [{"step": 5, "maxvio": [1.0, 3.0], "bias_min": -0.1, "bias_max": 0.1},
          {"step": 10, "maxvio": [0.5, 0.5], "bias_min": -0.2, "bias_max": 0.2}]
    h2 = [{"step": 5, "maxvio": [3.0, 1.0], "bias_min": 0.0, "bias_max": 0.0},
          {"step": 10, "maxvio": [1.5, 0.5], "bias_min": 0.0, "bias_max": 0.4}]
    avg = mean_history([h1, h2])
    assert [r["step"] for r in avg] == [5, 10]
    assert avg[0]["maxvio"] == [2.0, 2.0] and avg[1]["maxvio"] == [1.0, 0.5]
    assert avg[1]["bias_spread"] == pytest.approx(0.4)
    with pytest.raises(ValueError):
        mean_history([])
    fig = plot_bias_spread({"a": (avg, 0.01)})
    assert len(fig.axes[0].lines) == 2
    plt.close(fig)


def test_plot_sign_rule_draws_one_line_per_run_and_expert():
    runs = [simulate_sign_rule(g, steps=10, n_tokens=128, n_experts=4, top_k=1) for g in (0.0, 0.01)]
    fig = plot_sign_rule(runs)
    assert len(fig.axes[0].lines) == 2 and len(fig.axes[1].lines) == 4
    plt.close(fig)


def test_mtp_alignment_offsets():
    # depth k at position i embeds t_{i+k} and predicts t_{i+k+1}; the main model predicts t_{i+1}
    assert mtp_alignment(8, 2, 3) == [(0, None, 4), (1, 4, 5), (2, 5, 6)]
    assert mtp_alignment(8, 3, 6) == [(0, None, 7), (1, 7, 8)]        # depths 2, 3 would predict past t_8
    with pytest.raises(ValueError, match="position"):
        mtp_alignment(8, 1, 8)


def test_alignment_table_rows_match_offsets():
    tokens = [f"w{j}" for j in range(6)]                              # t_0 .. t_5, T = 5
    lines = alignment_table(tokens, depth=2).splitlines()
    assert len(lines) == 2 + 5
    row0 = lines[2].split()
    assert row0 == ["0", "w0", "w1", "w2", "w3"]
    assert lines[-1].split() == ["4", "w4", "w5", "-", "-"]
    fig = plot_mtp_alignment(tokens, depth=2, position=1)
    assert fig.axes
    plt.close(fig)
