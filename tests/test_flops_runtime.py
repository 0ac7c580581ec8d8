"""FLOPs-per-token arithmetic on a hand-checkable config, the matmul peak, and the CPU bf16 switch."""
import pytest
import torch
from conftest import TOY_MODEL

from dsv3_edu import runtime
from dsv3_edu.accounting import build_meta, param_counts
from dsv3_edu.config import ModelConfig, get_config
from dsv3_edu.flops import flops_per_token, matmul_params, measure_matmul_peak, mfu

# Small enough to count by hand: d=4, one head, no query compression, 2 experts (top-1) + 1 shared, D=1.
HAND = ModelConfig(vocab_size=10, dim=4, n_layers=2, n_dense_layers=1, inter_dim=6, n_heads=1, q_lora_rank=0,
                   kv_lora_rank=2, qk_nope_head_dim=2, qk_rope_head_dim=2, v_head_dim=2, max_seq_len=8,
                   moe_inter_dim=3, n_routed_experts=2, n_shared_experts=1, n_activated_experts=1,
                   n_expert_groups=1, n_limited_groups=1, n_mtp=1)


def test_matmul_params_by_hand():
    # MLA: W_Q 4x(1*(2+2)) = 16, W_DKV;W_KR 4x(2+2) = 16, W_UK;W_UV 2x(1*(2+2)) = 8, W_O (1*2)x4 = 8 -> 48
    # dense SwiGLU 3*4*6 = 72; MoE: router 2*4 = 8, (1 routed + 1 shared) * 3*4*3 = 72 -> 80
    # blocks 2*48 + 72 + 80 = 248; head 4*10 = 40; MTP module: M_k 8x4 = 32, block 48 + 80, head 40 -> 200
    assert matmul_params(HAND) == {"blocks": 248, "head": 40, "main": 288, "mtp_module": 200}


def test_flops_per_token_by_hand():
    f = flops_per_token(HAND, seq_len=4)
    # 6 N = 6 * 288; attention: 6 * heads * (d_qk 2+2 + d_v 2) = 36 per key, x 4 keys x 2 layers = 288
    # MTP depth 1 runs on 3 of 4 positions: 3/4 * (6 * 200 + 36 * 3 keys) = 981
    assert f == {"main": 1728.0, "attention": 288.0, "mtp": 981.0, "total": 2997.0}
    assert flops_per_token(HAND, seq_len=4, mtp=False)["total"] == 1728.0 + 288.0


@pytest.mark.parametrize("cfg", [ModelConfig(**TOY_MODEL), get_config("tiny"), get_config("deepseek-v3")],
                         ids=["toy", "tiny", "deepseek-v3"])
def test_matmul_params_agree_with_accounting(cfg):
    """Activated parameters (accounting, from the real module tree) = matmul weights + embedding + norms."""
    pc, model = param_counts(cfg), build_meta(cfg)
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n and not n.startswith("mtp."))
    mtp_norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n and n.startswith("mtp."))
    mp = matmul_params(cfg)
    assert mp["main"] == pc["activated_params"] - pc["embedding_params"] - norms
    # an MTP module's own activated weights, plus the shared head it multiplies again
    assert cfg.n_mtp * mp["mtp_module"] == pc["mtp_activated_params"] - mtp_norms + cfg.n_mtp * pc["head_params"]


def test_bad_seq_len():
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(HAND, 0)


def test_matmul_peak_and_mfu():
    r = measure_matmul_peak(torch.float32, "cpu", sizes=(64, 128), min_time_s=0.01)
    assert set(r["by_size"]) == {64, 128} and r["peak"] == max(r["by_size"].values()) > 0
    assert mfu(tokens_per_s=100.0, flops_per_tok=2997.0, peak_flops=2997.0 * 400) == 0.25


# ----------------------------------------------------------------------------- CPU bf16 switch
@pytest.mark.parametrize("flags, native", [({"avx2", "avx512_bf16"}, True), ({"avx2", "amx_bf16"}, True),
                                           ({"avx2", "avx512f"}, False)])
def test_native_bf16_from_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: flags)
    assert runtime.cpu_has_native_bf16() is native
    cpu = torch.device("cpu")
    assert runtime.resolve_dtype("auto", cpu) == (torch.bfloat16 if native else torch.float32)
    assert runtime.resolve_dtype("fp32", cpu) == torch.float32      # the flag forces either
    assert runtime.resolve_dtype("bf16", cpu) == torch.bfloat16


def test_native_bf16_without_proc_cpuinfo(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: None)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512_BF16")
    assert runtime.cpu_has_native_bf16()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not runtime.cpu_has_native_bf16()


def test_this_machine_auto_matches_its_flags():
    """Whatever CPU runs the tests: auto is bf16 exactly when the CPU flags say native bf16."""
    flags = runtime._cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert runtime.resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native else torch.float32)


def test_autocast_switch_runs_the_model_in_the_dtype():
    from dsv3_edu.model import Transformer
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**TOY_MODEL))
    x = torch.randint(0, 64, (2, 8))
    cpu = torch.device("cpu")
    with runtime.autocast(cpu, torch.bfloat16):
        assert model.layers[0].attn.wo(torch.ones(1, 16)).dtype == torch.bfloat16
        lb = model(x, x).main_loss
    with runtime.autocast(cpu, torch.float32):
        assert model.layers[0].attn.wo(torch.ones(1, 16)).dtype == torch.float32
        lf = model(x, x).main_loss
    assert model.head.weight.dtype == torch.float32                   # master weights stay fp32
    assert lb.dtype == lf.dtype == torch.float32 and abs(lb.item() - lf.item()) < 0.05


def test_bad_dtype_is_one_clear_error():
    with pytest.raises(ValueError, match="dtype must be one of"):
        runtime.resolve_dtype("fp16", torch.device("cpu"))
