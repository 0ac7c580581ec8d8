"""The pipeline executor: the B/W split on autograd graphs, and real multi-process runs vs one process."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dsv3_edu.parallel.pipeline import (
    P2P,
    LayerStack,
    StageRunner,
    backward_full,
    backward_input,
    backward_weight,
    build_stages,
    make_data,
    mlp_stage,
    one_f_one_b,
    pipeline_steps,
    reference_step,
    spawn_run,
    stages_of_rank,
    zb1p,
)


class Tangled(nn.Module):
    """A stage with the awkward cases: a norm, a weight used twice, a parameter on two paths, a residual."""

    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.scale = nn.Parameter(torch.randn(d))
        self.up, self.gate = nn.Linear(d, 2 * d), nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)
        self.shared = nn.Linear(d, d, bias=False)

    def forward(self, x):                              # (B, T, d) -> (B, T, d)
        h = self.norm(x) * self.scale
        h = x + self.down(F.silu(self.gate(h)) * self.up(h))
        h = self.shared(torch.tanh(self.shared(h))) + h
        return h + self.scale.sum()


def _grads(module):
    return [p.grad.clone() if p.grad is not None else None for p in module.parameters()]


@pytest.mark.parametrize("make", [lambda: mlp_stage(8), lambda: Tangled(8)])
def test_split_backward_equals_full_backward(make):
    torch.manual_seed(0)
    mod = make()
    x0, gy = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    x = x0.clone().requires_grad_(True)
    mod(x).backward(gy)
    ref_dx, ref = x.grad.clone(), _grads(mod)
    mod.zero_grad(set_to_none=True)

    x = x0.clone().requires_grad_(True)
    y = mod(x)
    dx, work = backward_input(y, gy, x, list(mod.parameters()))
    assert all(p.grad is None for p in mod.parameters())            # B touched no weight
    torch.testing.assert_close(dx, ref_dx)
    backward_weight(work, list(mod.parameters()))
    for g, r in zip(_grads(mod), ref):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)
    dx, work = backward_input(mod(x0), gy, x0, list(mod.parameters()))   # input without grad: W does it all
    assert dx is None and work.root is not None
    backward_weight(work, list(mod.parameters()))
    for g, r in zip(_grads(mod), ref):
        torch.testing.assert_close(g, 2 * r, atol=1e-5, rtol=1e-5)  # accumulated a second time, like backward()


def test_split_backward_first_stage_with_token_ids():
    torch.manual_seed(0)
    emb = nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 8))
    tokens, gy = torch.randint(0, 11, (2, 5)), torch.randn(2, 5, 8)
    emb(tokens).backward(gy)
    ref = _grads(emb)
    emb.zero_grad(set_to_none=True)
    dx, work = backward_input(emb(tokens), gy, tokens, list(emb.parameters()))
    assert dx is None and all(p.grad is None for p in emb.parameters())
    backward_weight(work, list(emb.parameters()))
    for g, r in zip(_grads(emb), ref):
        torch.testing.assert_close(g, r)


def test_backward_full_and_no_graph_error():
    torch.manual_seed(0)
    mod = mlp_stage(4)
    x = torch.randn(3, 4, requires_grad=True)
    loss = mod(x).pow(2).mean()
    dx = backward_full(loss, None, x, list(mod.parameters()))
    x2 = x.detach().clone().requires_grad_(True)
    ref = [p.grad.clone() for p in mod.parameters()]
    mod.zero_grad(set_to_none=True)
    mod(x2).pow(2).mean().backward()
    torch.testing.assert_close(dx, x2.grad)
    for p, r in zip(mod.parameters(), ref):
        torch.testing.assert_close(p.grad, r)
    with torch.no_grad():
        y = mod(x)
    with pytest.raises(ValueError, match="no autograd graph"):
        backward_input(y, None, x, list(mod.parameters()))


def test_stage_runner_single_rank_zb1p_matches_reference():
    """pp = 1 needs no processes: the runner's F/B/W bookkeeping alone, against plain autograd."""
    n_micro, dim = 4, 8
    sched = zb1p(1, n_micro)
    (stage,) = build_stages(1, dim=dim, seed=3)
    (ref_stage,) = build_stages(1, dim=dim, seed=3)
    inputs, targets = make_data(n_micro, dim=dim, seed=3)
    p2p = P2P(sched, 0, inputs[0].shape, inputs[0].dtype, torch.device("cpu"), groups={})
    loss = StageRunner(sched, 0, {0: stage}, p2p).run(inputs, targets)
    ref_loss = reference_step([ref_stage], inputs, targets)
    assert loss.item() == pytest.approx(ref_loss, abs=1e-6)
    for p, r in zip(stage.parameters(), ref_stage.parameters()):
        torch.testing.assert_close(p.grad, r.grad, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="no module"):
        StageRunner(sched, 0, {}, p2p)


class _ScaledLinear(nn.Module):
    """A stand-in for a Transformer Block: forward(x, extra)."""

    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x, scale):
        return self.lin(x) * scale


def test_layer_stack_passes_extras_and_splits():
    torch.manual_seed(0)
    stack = LayerStack([_ScaledLinear(4), _ScaledLinear(4)], torch.full((4,), 0.5))
    x = torch.randn(3, 4)
    expect = stack.layers[1](stack.layers[0](x, stack.extra0), stack.extra0)
    torch.testing.assert_close(stack(x), expect)
    assert "extra0" in dict(stack.named_buffers()) and "extra0" not in stack.state_dict()
    y = stack(x.requires_grad_(True))
    dx, work = backward_input(y, torch.ones_like(y), x, list(stack.parameters()))
    assert dx.shape == x.shape and all(p.grad is None for p in stack.parameters())
    backward_weight(work, list(stack.parameters()))
    assert all(p.grad is not None for p in stack.parameters())


def test_p2p_needs_a_group_per_channel():
    sched = one_f_one_b(2, 2)
    with pytest.raises(ValueError, match="no process group for channel"):
        P2P(sched, 0, (2, 4), torch.float32, torch.device("cpu"), groups={})


def test_spawn_run_rejects_bad_world_size():
    with pytest.raises(ValueError, match="world_size"):
        spawn_run(0, pipeline_steps)


# ----------------------------------------------------------------------------- real processes

DIM, SEED = 16, 7


def _n_micro(world):
    """Legal and a little awkward: not multiples of PP; DualPipeV with an odd count (allowed by the reference)."""
    return {"1f1b": world + 2, "zb1p": world + 3, "dualpipe": 2 * world + 2, "dualpipev": 2 * world + 1}


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_pipeline_matches_single_process(world):
    methods = ["1f1b", "zb1p", "dualpipe", "dualpipev"]
    n_micro = _n_micro(world)
    results = spawn_run(world, pipeline_steps, methods, n_micro, dim=DIM, seed=SEED, backend="gloo")
    assert len(results) == world
    for m in methods:
        n_stages = 2 * world if m == "dualpipev" else world
        stages = build_stages(n_stages, dim=DIM, seed=SEED)
        inputs, targets = make_data(n_micro[m], dim=DIM, seed=SEED)
        ref_loss = reference_step(stages, inputs, targets)
        seen = set()
        for rank, res in enumerate(results):
            got = res[m]
            assert got["loss"] == pytest.approx(ref_loss, abs=1e-5), (m, rank)
            expect_stages = {rank} if m in ("1f1b", "zb1p") else (
                {rank, world - 1 - rank} if m == "dualpipe" else {rank, 2 * world - 1 - rank})
            assert set(got["grads"]) == expect_stages, (m, rank)
            for s, grads in got["grads"].items():
                seen.add(s)
                ref = [p.grad for p in stages[s].parameters()]
                assert len(grads) == len(ref)
                for g, r in zip(grads, ref):
                    torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4, msg=f"{m} rank {rank} stage {s}")
        assert seen == set(range(n_stages)), m


def test_stages_of_rank_for_each_method():
    from dsv3_edu.parallel.pipeline import make_schedule
    assert stages_of_rank(make_schedule("zb1p", 4, 4), 2) == [2]
    assert stages_of_rank(make_schedule("dualpipe", 4, 8), 1) == [1, 2]
    assert stages_of_rank(make_schedule("dualpipev", 4, 8), 1) == [1, 6]
