"""Every formula of the model core has a test that can fail."""
import copy
import math

import pytest
import torch
from conftest import small_config

from dsv3_edu.balance import (
    balance_stats,
    batch_aux_loss,
    bias_update,
    expert_load,
    max_violation,
    sequence_balance_loss,
    update_biases,
)
from dsv3_edu.config import PRESETS, get_config
from dsv3_edu.model import (
    MLA,
    Gate,
    MoE,
    Transformer,
    apply_rotary_emb,
    grouped_mm,
    precompute_freqs_cis,
    rms_norm,
    route,
    yarn_mscale,
)
from dsv3_edu.model.moe import padded_grouped_mm
from dsv3_edu.model.rope import rope_frequencies


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Transformer(small_config()).eval()


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("kw, msg", [
    (dict(n_routed_experts=10), "must divide n_routed_experts"),
    (dict(n_activated_experts=9), "top-k"),
    (dict(n_limited_groups=5), "n_limited_groups"),
    (dict(qk_rope_head_dim=7), "even"),
    (dict(n_dense_layers=9), "n_dense_layers"),
    (dict(balance="magic"), "balance"),
    (dict(n_activated_experts=6, n_limited_groups=2), "kept groups"),
])
def test_config_errors_are_clear(kw, msg):
    with pytest.raises(ValueError, match=msg):
        small_config(**kw)


def test_get_config_unknown_and_overrides(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("gpt-5")
    assert get_config("tiny", n_layers=2).n_layers == 2
    p = tmp_path / "c.json"
    small_config().save(p)
    assert get_config(p) == small_config()
    p.write_text('{"dim": 64, "bogus": 1}')
    with pytest.raises(ValueError, match="unknown fields"):
        get_config(p)


# ----------------------------------------------------------------------------- norm, rope
def test_rms_norm_unit_rms():
    x = torch.randn(3, 5, 64) * 7
    y = rms_norm(x, torch.ones(64))
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(3, 5), atol=1e-4)


def test_rope_is_relative():
    """<R(m) q, R(n) k> depends only on m - n."""
    cfg = small_config()
    f = precompute_freqs_cis(cfg, 40)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    def dot(m, n):
        return (apply_rotary_emb(q, f[m:m + 1]) * apply_rotary_emb(k, f[n:n + 1])).sum()
    assert torch.allclose(dot(5, 2), dot(33, 30), atol=1e-5)
    assert not torch.allclose(dot(5, 2), dot(5, 4), atol=1e-3)


def test_yarn_only_beyond_original_context():
    short = small_config(max_seq_len=64)
    long = small_config(max_seq_len=8192, original_seq_len=4096, rope_factor=40)
    base = rope_frequencies(short)
    yarn = rope_frequencies(long)
    assert torch.equal(base, 1.0 / (10000 ** (torch.arange(0, 8, 2) / 8)))
    assert torch.allclose(yarn[0], base[0])                 # fastest pair extrapolated (kept)
    assert torch.allclose(yarn[-1], base[-1] / 40)          # slowest pair interpolated by s
    assert math.isclose(yarn_mscale(40, 1.0), 0.1 * math.log(40) + 1)
    mla = MLA(long)
    assert math.isclose(mla.softmax_scale, 24 ** -0.5 * yarn_mscale(40) ** 2)
    assert math.isclose(MLA(short).softmax_scale, 24 ** -0.5)


# ----------------------------------------------------------------------------- attention
def test_causality(model):
    x = torch.randint(0, 256, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:], atol=1e-3)


def test_absorbed_equals_naive(model):
    x = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        a = model(x, attn_mode="naive").logits
        b = model(x, attn_mode="absorbed").logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


@pytest.mark.parametrize("mode", ["naive", "absorbed"])
def test_incremental_decode_matches_full_forward(model, mode):
    x = torch.randint(0, 256, (2, 30))
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache(2, 64)
        parts = [model(x[:, :9], start_pos=0, cache=cache, attn_mode=mode).logits]
        parts.append(model(x[:, 9:13], start_pos=9, cache=cache, attn_mode=mode).logits)   # chunked prefill
        for t in range(13, 30):
            parts.append(model(x[:, t:t + 1], start_pos=t, cache=cache, attn_mode=mode).logits)
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_absorbed_cache_is_latent_sized(model):
    cfg = model.cfg
    with torch.no_grad():
        caches = {}
        for mode in ("naive", "absorbed"):
            c = model.new_cache(1, 64)
            model(torch.randint(0, 256, (1, 64)), cache=c, attn_mode=mode)
            caches[mode] = sum(x.nbytes() for x in c)
    per_token_layer = caches["absorbed"] / (64 * cfg.n_layers * 4)
    assert per_token_layer == cfg.kv_lora_rank + cfg.qk_rope_head_dim
    assert caches["naive"] == 64 * cfg.n_layers * 4 * cfg.n_heads * (cfg.qk_head_dim + cfg.v_head_dim)


def test_cache_overflow_is_clear(model):
    c = model.new_cache(1, 8)
    with pytest.raises(ValueError, match="KV cache holds"):
        model(torch.randint(0, 256, (1, 9)), cache=c)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.new_cache(1, 1000)


# ----------------------------------------------------------------------------- routing
def test_bias_changes_selection_but_never_weights():
    torch.manual_seed(0)
    scores = torch.rand(64, 8)
    bias = torch.zeros(8)
    bias[3] = 10.0  # expert 3 always chosen
    w0, i0 = route(scores, None, 2, 1, 1, 2.5)
    w1, i1 = route(scores, bias, 2, 1, 1, 2.5)
    assert (i1 == 3).any(-1).all() and not (i0 == 3).any(-1).all()
    # weights are the unbiased affinities of the chosen experts, normalised, times route_scale
    expect = scores.gather(1, i1)
    assert torch.allclose(w1, expect / expect.sum(-1, keepdim=True) * 2.5)
    assert torch.allclose(w1.sum(-1), torch.full((64,), 2.5))


def test_group_limited_routing_stays_in_kept_groups():
    torch.manual_seed(1)
    scores = torch.rand(500, 16)
    bias = torch.randn(16) * 0.1
    w, idx = route(scores, bias, 4, n_groups=4, topk_groups=2, route_scale=1.0)
    choice = (scores + bias).view(500, 4, 4)
    kept = choice.topk(2, -1).values.sum(-1).topk(2, -1).indices          # (N, 2) best groups by top-2 sum
    groups_used = idx // 4
    assert all(set(g.tolist()) <= set(k.tolist()) for g, k in zip(groups_used, kept))
    assert (groups_used.unique(dim=0).size(0) > 1)


def test_grouped_mm_matches_loop_and_fallback():
    torch.manual_seed(0)
    counts = torch.tensor([3, 0, 5, 2])
    x, w = torch.randn(10, 8), torch.randn(4, 6, 8)
    ref = torch.cat([x[s:s + c] @ w[e].T for e, (s, c) in enumerate(zip((counts.cumsum(0) - counts).tolist(),
                                                                      counts.tolist()))])
    assert torch.allclose(grouped_mm(x, w, counts), ref, atol=1e-5)
    assert torch.allclose(padded_grouped_mm(x, w, counts), ref, atol=1e-5)


def test_moe_matches_per_token_reference():
    """MoE = shared FFN + sum of g_i FFN_i, computed token by token with plain Python."""
    torch.manual_seed(0)
    cfg = small_config()
    moe = MoE(cfg)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.1)
    moe.gate.bias.normal_(0, 0.05)
    x = torch.randn(2, 5, cfg.dim)
    y = moe(x)
    weights, indices, _ = moe.gate(x.reshape(-1, cfg.dim))
    e = moe.experts
    for n, tok in enumerate(x.reshape(-1, cfg.dim)):
        out = moe.shared_experts(tok)
        for g, i in zip(weights[n], indices[n]):
            h = torch.nn.functional.silu(e.w1[i] @ tok) * (e.w3[i] @ tok)
            out = out + g * (e.w2[i] @ h)
        assert torch.allclose(y.reshape(-1, cfg.dim)[n], out, atol=1e-5)


# ----------------------------------------------------------------------------- balancing
def test_bias_update_sign_rule():
    bias = torch.zeros(4)
    bias_update(bias, torch.tensor([10.0, 2.0, 5.0, 3.0]), gamma=0.001)  # mean load 5
    assert torch.allclose(bias, torch.tensor([-0.001, 0.001, 0.0, 0.001]))


def test_bias_update_moves_skewed_load_toward_balance():
    """Repeated sign-rule updates on a fixed skewed batch drive MaxVio down."""
    torch.manual_seed(0)
    cfg = small_config(n_expert_groups=1, n_limited_groups=1)
    gate = Gate(cfg)
    torch.nn.init.normal_(gate.weight, std=0.02)
    x = torch.randn(2048, cfg.dim) + 3 * gate.weight[0].detach() / gate.weight[0].norm()  # skew toward expert 0
    def maxvio():
        _, idx, _ = gate(x)
        return max_violation(expert_load(idx, 8)).item()
    before = maxvio()
    for _ in range(300):
        _, idx, _ = gate(x)
        bias_update(gate.bias, expert_load(idx, 8), gamma=0.001)
    assert before > 0.5 and maxvio() < 0.3 * before


def test_update_biases_from_returned_loads():
    torch.manual_seed(0)
    m = Transformer(small_config())
    m.train()
    out = m(torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16)))
    gates = [b.ffn.gate for b in m.layers[1:]] + [m.mtp[0].block.ffn.gate]
    assert m.gates() == gates
    assert [n.sum().item() for n in out.loads] == [64, 64, 60]        # the MTP block sees T - 1 positions
    assert [tuple(i.shape) for i in out.expert_indices] == [(2, 16, 2), (2, 16, 2), (2, 15, 2)]
    update_biases(m, out.loads, gamma=0.01)
    assert all(g.bias.abs().max() == pytest.approx(0.01) for g in gates)
    stats = balance_stats(m, out.loads)
    assert len(stats["maxvio"]) == 3 and min(stats["maxvio"]) > 0
    assert stats["bias_min"] == pytest.approx(-0.01) and stats["bias_max"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="3 gates"):
        update_biases(m, out.loads[:2], gamma=0.01)


def test_extra_forward_does_not_change_bias_update():
    """The update is a function of the loads passed in: an extra training-mode forward (a diagnostic,
    recomputation) between the step and the update leaves the biases exactly as without it."""
    torch.manual_seed(0)
    a = Transformer(small_config()).train()
    b = copy.deepcopy(a)
    x = torch.randint(0, 256, (2, 16))
    loads = a(x, x).loads
    b(x, x)
    b(torch.randint(0, 256, (4, 16)), torch.randint(0, 256, (4, 16)))   # the extra forward, other tokens
    update_biases(a, loads, gamma=0.01)
    update_biases(b, loads, gamma=0.01)
    for ga, gb in zip(a.gates(), b.gates()):
        assert torch.equal(ga.bias, gb.bias) and ga.bias.abs().sum() > 0
    assert not any(k for k in vars(b.layers[1].ffn) if k.startswith("last_") or k == "balance_loss")


def test_balance_losses_formula():
    # one sequence, 2 tokens, 4 experts, top-1
    scores = torch.tensor([[[0.8, 0.2, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]]])
    idx = torch.tensor([[[0], [0]]])
    # f = E/(K T) * counts = 4/2 * [2,0,0,0] = [4,0,0,0]; P = mean s' = [0.65, 0.35, 0, 0]
    assert sequence_balance_loss(scores, idx, 1, alpha=1.0).item() == pytest.approx(4 * 0.65)
    assert batch_aux_loss(scores[0], idx[0], 1, alpha=1.0).item() == pytest.approx(4 * 0.65)
    # perfectly balanced routing gives the minimum value alpha * 1
    bal = torch.full((1, 4, 4), 0.25)
    assert sequence_balance_loss(bal, torch.arange(4).view(1, 4, 1), 1, 1.0).item() == pytest.approx(1.0)


def test_max_violation():
    assert max_violation(torch.tensor([1.0, 1.0, 1.0, 1.0])).item() == 0
    assert max_violation(torch.tensor([4.0, 0.0, 0.0, 0.0])).item() == pytest.approx(3.0)


@pytest.mark.parametrize("balance, expect_loss", [("aux_free", True), ("aux_loss", True), ("none", False)])
def test_balance_modes(balance, expect_loss):
    torch.manual_seed(0)
    m = Transformer(small_config(balance=balance)).train()
    x = torch.randint(0, 256, (2, 16))
    out = m(x, x)
    assert (out.balance_loss is not None) == expect_loss
    if balance != "aux_free":  # the selection bias is only used by the aux-loss-free mode
        for b in m.layers[1:]:
            b.ffn.gate.bias.fill_(100.0)
        assert torch.allclose(m.eval()(x).logits, m(x).logits)


# ----------------------------------------------------------------------------- MTP
def test_mtp_targets_are_offset_by_hand():
    """Tokens t0..t5, targets t1..t6. Depth 1 at row i sees h_i and Emb(t_{i+1}) and must predict t_{i+2}."""
    torch.manual_seed(0)
    cfg = small_config(n_mtp=2)
    m = Transformer(cfg).train()
    tokens = torch.tensor([[10, 11, 12, 13, 14, 15, 16]])
    x, y = tokens[:, :-1], tokens[:, 1:]
    out = m(x, y)
    d1, d2 = out.mtp_logits
    assert d1.shape[1] == 5 and d2.shape[1] == 4
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(out.mtp_losses[0], ce(d1[0], torch.tensor([12, 13, 14, 15, 16])))
    assert torch.allclose(out.mtp_losses[1], ce(d2[0], torch.tensor([13, 14, 15, 16])))
    total = out.main_loss + cfg.mtp_lambda / 2 * (out.mtp_losses[0] + out.mtp_losses[1]) + out.balance_loss
    assert torch.allclose(out.loss, total)


def test_mtp_input_uses_next_token_embedding():
    """Changing t_{i+1} changes depth-1 logits at row i but not at rows < i."""
    torch.manual_seed(0)
    m = Transformer(small_config()).train()
    x = torch.randint(0, 256, (1, 12))
    x2 = x.clone()
    x2[0, 7] = (x[0, 7] + 1) % 256
    with torch.no_grad():
        a, b = m(x).mtp_logits[0], m(x2).mtp_logits[0]
    assert torch.allclose(a[0, :6], b[0, :6], atol=1e-6)
    assert not torch.allclose(a[0, 6], b[0, 6], atol=1e-4)


def test_mtp_skipped_in_eval_unless_asked(model):
    x = torch.randint(0, 256, (1, 10))
    assert model(x).mtp_logits == []
    assert len(model(x, with_mtp=True).mtp_logits) == 1


def test_mtp_step_matches_full_mtp_forward(model):
    x = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        full = model(x, with_mtp=True)
        cache = model.new_cache(1, 64, mtp=True)
        h = model(x[:, :15], cache=cache, attn_mode="absorbed").hidden
        step = model.mtp_step(h, x[:, 1:16], 0, cache)[0]
    assert torch.allclose(step, full.mtp_logits[0], atol=1e-5)


# ----------------------------------------------------------------------------- whole model
def test_training_step_reduces_loss():
    torch.manual_seed(0)
    m = Transformer(small_config(init_std=0.02)).train()
    x = torch.randint(0, 256, (4, 32))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        out = m(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.main_loss.item()
    assert out.main_loss.item() < first - 1.0
    assert all(p.grad is not None for n, p in m.named_parameters() if "mtp" not in n or True)


def test_presets_build():
    for name in ("nano", "tiny"):
        m = Transformer(PRESETS[name])
        assert m(torch.randint(0, 100, (1, 8))).logits.shape == (1, 8, PRESETS[name].vocab_size)
