"""Shared pytest fixtures and hooks (keep small)."""
import contextlib
import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")   # figures are drawn, never shown

# The FP8 Triton kernels module is the one place that chooses TRITON_INTERPRET (the CPU interpreter when there is
# no GPU); that only works before triton is imported, and transformers (test_accounting_hf) imports triton. So
# the kernels are imported first, here; without triton they are skipped by their tests.
with contextlib.suppress(ImportError):
    import dsv3_edu.fp8.kernels  # noqa: F401

_NOTEBOOK_TIMES = pytest.StashKey[dict]()


def pytest_configure(config):
    config.stash[_NOTEBOOK_TIMES] = {}


@pytest.fixture
def record_notebook_time(request):
    """``record_notebook_time(name, seconds)``: listed in the terminal summary after the run."""
    return request.config.stash[_NOTEBOOK_TIMES].__setitem__


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    times = config.stash.get(_NOTEBOOK_TIMES, {})
    if times:
        terminalreporter.section("notebook execution times (DSV3_FAST=1)")
        for name, seconds in sorted(times.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{seconds:8.1f} s  {name}")
        terminalreporter.write_line(f"{sum(times.values()):8.1f} s  total")


# The test models. TOY_MODEL: small enough for trainer tests, every feature (MLA with q compression, MoE with
# groups, MTP) at toy size. SMALL_MODEL: one size up, where routing has room (8 experts in 4 groups, 2 kept, two
# MoE layers): the model-core tests and the parity with transformers. Tests state only what they change.
TOY_MODEL = dict(vocab_size=64, dim=32, n_layers=2, n_dense_layers=1, inter_dim=64, n_heads=2, q_lora_rank=16,
                 kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, max_seq_len=64,
                 moe_inter_dim=16, n_routed_experts=4, n_shared_experts=1, n_activated_experts=2, n_expert_groups=2,
                 n_limited_groups=1, init_std=0.02)
SMALL_MODEL = dict(vocab_size=256, dim=64, n_layers=3, n_dense_layers=1, inter_dim=128, n_heads=4, q_lora_rank=32,
                   kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, max_seq_len=64,
                   moe_inter_dim=32, n_routed_experts=8, n_shared_experts=1, n_activated_experts=2, n_expert_groups=4,
                   n_limited_groups=2, init_std=0.05)


def toy_config(**overrides):
    """TOY_MODEL as a ModelConfig, with ``overrides``."""
    from dsv3_edu.config import ModelConfig
    return ModelConfig(**{**TOY_MODEL, **overrides})


def small_config(**overrides):
    """SMALL_MODEL as a ModelConfig, with ``overrides``."""
    from dsv3_edu.config import ModelConfig
    return ModelConfig(**{**SMALL_MODEL, **overrides})


@pytest.fixture(scope="module")
def dataset():
    """A learnable token stream (a repeating pattern with noise), split 3600 / 400."""
    from dsv3_edu.data import TokenDataset
    g = torch.Generator().manual_seed(0)
    base = torch.arange(4000) % 17 + (torch.rand(4000, generator=g) < 0.1).long() * 20
    return TokenDataset(base[:3600].int(), base[3600:].int())
