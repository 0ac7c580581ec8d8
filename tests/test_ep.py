"""Expert parallelism: EPMoE on 2 and 4 gloo processes equals the single-process MoE (outputs and gradients);
node-limited routing bounds the ranks a token reaches; the redundant-expert planner evens out per-rank load."""
import pytest
import torch
from conftest import toy_config

from dsv3_edu.balance import expert_load, max_violation
from dsv3_edu.model import route
from dsv3_edu.parallel.ep import (
    dispatch_plan,
    dispatch_stats,
    ep_check_worker,
    max_ranks_per_token,
    node_limited_comparison,
    plan_redundant_experts,
    rank_load,
)
from dsv3_edu.parallel.launch import spawn_run

# dim 32, 8 experts, top-2, 4 groups with 2 kept; one shared expert
CFG = toy_config(n_routed_experts=8, n_expert_groups=4, n_limited_groups=2)


# ----------------------------------------------------------------------------- EP == single process


@pytest.mark.parametrize("world_size, top_k", [(2, 2), (4, 3)])
def test_ep_matches_single_process(world_size, top_k):
    cfg = CFG.replace(n_activated_experts=top_k)
    results = spawn_run(world_size, ep_check_worker, cfg.to_dict(), 2, 8, 0, backend="gloo")
    assert [r["rank"] for r in results] == list(range(world_size))
    for r in results:
        assert r["backend"] == "gloo"
        for name, err in r["err"].items():   # output, input / gate / local expert / shared grads, synced load
            assert err < 1e-5, f"rank {r['rank']}: {name} differs from the single-process MoE by {err:.2e}"
    # what EPMoE actually sent is what dispatch_stats predicts from the routing
    indices = torch.cat([r["local_indices"] for r in results])                   # (N, K) every token
    stats = dispatch_stats(indices, 8, world_size, 8 // world_size, CFG.dim, 4)
    sent = torch.stack([r["send_counts"] for r in results])                      # (W src, W dst)
    received = torch.stack([r["recv_counts"] for r in results])                  # (W dst, W src)
    assert torch.equal(sent.t(), received)
    assert torch.equal(sent.sum(0), stats.copies_per_rank)
    assert sent.sum().item() * CFG.dim * 4 / indices.size(0) == pytest.approx(stats.bytes_per_token)
    # one expert group per rank at W=4: top-3 experts, yet a token reaches at most M = 2 ranks
    assert stats.max_ranks <= max_ranks_per_token(top_k, 4, 2, world_size) == 2


def test_ep_idle_ranks_still_match():
    """Experts 0 and 1 (rank 0) take every token: rank 1 receives nothing, yet must join the all-to-alls
    (forward and backward) and report zero gradients for its experts."""
    results = spawn_run(2, ep_check_worker, CFG.to_dict(), 2, 4, 0, 2, backend="gloo")
    assert [int(r["recv_counts"].sum()) for r in results] == [16, 0]
    for r in results:
        for name, err in r["err"].items():
            assert err < 1e-5, f"rank {r['rank']}: {name} differs from the single-process MoE by {err:.2e}"


# ----------------------------------------------------------------------------- dispatch planning and stats


def test_dispatch_plan_dedups_per_rank():
    # 4 experts on 2 ranks (0,1 | 2,3); token 0 -> experts 0,1 (rank 0 twice), token 1 -> 1,2, token 2 -> 3,2
    indices = torch.tensor([[0, 1], [1, 2], [3, 2]])
    plan = dispatch_plan(indices, world_size=2, experts_per_rank=2)
    assert plan.send_counts.tolist() == [2, 2]
    assert plan.tokens.tolist() == [0, 1, 1, 2]          # rank 0 gets tokens 0, 1; rank 1 gets 1, 2
    stats = dispatch_stats(indices, 4, 2, 2, dim=10, bytes_per_elem=2)
    assert stats.ranks_per_token.tolist() == [1, 2, 1]
    assert stats.bytes_per_token == pytest.approx(4 / 3 * 20)
    assert stats.bytes_per_token_no_dedup == 40


def test_node_limited_routing_bounds_ranks_per_token():
    torch.manual_seed(0)
    cfg = CFG.replace(n_routed_experts=32, n_activated_experts=8, n_expert_groups=8, n_limited_groups=3)
    scores = torch.rand(2048, 32)
    out = node_limited_comparison(scores, torch.randn(32) * 0.05, cfg, world_size=8)
    lim, free = out["limited"], out["unlimited"]
    assert lim.max_ranks <= 3 == max_ranks_per_token(8, 8, 3, 8)
    assert free.max_ranks > 3                            # without the limit top-8 spreads over more ranks
    assert lim.bytes_per_token < free.bytes_per_token
    assert lim.bytes_per_token == pytest.approx(lim.mean_ranks * cfg.dim * 2)


def test_max_ranks_per_token_cases():
    assert max_ranks_per_token(8, 8, 4, 8) == 4          # the 671B: one group per node, M = 4
    assert max_ranks_per_token(8, 8, 4, 4) == 4          # two groups per rank
    assert max_ranks_per_token(8, 8, 4, 64) == 8         # a group spans 8 ranks: 4 x 8 = 32 > K = 8
    assert max_ranks_per_token(2, 4, 1, 8) == 2          # a group spans 2 ranks
    assert max_ranks_per_token(8, 8, 4, 3) == 3          # no guarantee from groups: W


def test_dispatch_stats_rejects_bad_input():
    idx = torch.tensor([[0, 5]])
    with pytest.raises(ValueError, match="n_experts"):
        dispatch_stats(idx, 8, 3, 2, 4, 2)
    with pytest.raises(ValueError, match="indices"):
        dispatch_stats(torch.tensor([[0, 8]]), 8, 2, 4, 4, 2)
    with pytest.raises(ValueError, match="dim"):
        dispatch_stats(idx, 8, 2, 4, 0, 2)


# ----------------------------------------------------------------------------- per-rank load, redundant experts


def test_uniform_load_is_balanced_per_rank():
    indices = torch.arange(64).remainder(8).view(32, 2)  # every expert chosen 8 times
    load = expert_load(indices, 8)
    assert rank_load(load, 4).tolist() == [16.0] * 4
    assert max_violation(rank_load(load, 4)).item() == 0
    plan = plan_redundant_experts(load, 4, 4)            # nothing to fix: stays flat
    assert plan.rank_load.tolist() == [16.0] * 4
    with pytest.raises(ValueError, match="divide"):
        rank_load(load, 3)


def test_redundant_experts_even_out_a_skewed_load():
    torch.manual_seed(0)
    load = (1000 / torch.arange(1, 17).float() ** 1.2)[torch.randperm(16)]   # Zipf-like hot experts
    W, n_red = 4, 4
    before = rank_load(load, W)
    plan = plan_redundant_experts(load, W, n_red)
    assert plan.rank_experts.shape == (W, (16 + n_red) // W)
    assert plan.replicas.sum() == 16 + n_red and plan.replicas.min() >= 1
    assert torch.equal(torch.bincount(plan.rank_experts.flatten(), minlength=16), plan.replicas)
    assert plan.replicas[load.argmax()] >= 2             # the hottest expert got a copy
    for row in plan.rank_experts.tolist():                # copies of one expert sit on different ranks
        assert len(set(row)) == len(row)
    assert plan.rank_load.sum().item() == pytest.approx(load.sum().item(), rel=1e-5)
    assert max_violation(plan.rank_load) < 0.5 * max_violation(before)
    assert max_violation(plan.rank_load) < 0.05


def test_plan_redundant_experts_rejects_bad_input():
    load = torch.ones(8)
    with pytest.raises(ValueError, match="divide"):
        plan_redundant_experts(load, 4, 3)
    with pytest.raises(ValueError, match="n_redundant"):
        plan_redundant_experts(load, 2, 10)
    with pytest.raises(ValueError, match="non-negative"):
        plan_redundant_experts(-load, 2, 0)


def test_route_limited_matches_config():
    # node_limited_comparison's "limited" routing is exactly the gate's route()
    torch.manual_seed(1)
    scores = torch.rand(64, 8)
    _, idx = route(scores, None, 2, 4, 2, 2.5)
    stats = node_limited_comparison(scores, None, CFG, world_size=4)["limited"]
    assert torch.equal(stats.ranks_per_token, dispatch_stats(idx, 8, 4, 2, CFG.dim, 2).ranks_per_token)
