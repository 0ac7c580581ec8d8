"""The trainer's measures: dtype switch, FLOP/s and MFU per row, validation bits/byte and MTP acceptance."""
import json
import math

import pytest
import torch
from conftest import TOY_MODEL

from dsv3_edu.config import ModelConfig
from dsv3_edu.data import TokenDataset
from dsv3_edu.evaluate import mtp_acceptance
from dsv3_edu.flops import flops_per_token
from dsv3_edu.model import Transformer
from dsv3_edu.runtime import resolve_dtype
from dsv3_edu.train import TrainConfig, evaluate, train


def tc(**kw) -> TrainConfig:
    d = dict(steps=4, batch_size=4, seq_len=16, warmup_steps=1, eval_every=4, eval_batches=2, log_every=2,
             lr=3e-3, out_dir=None, plots=False, mfu=False)
    d.update(kw)
    return TrainConfig(**d)


@pytest.fixture(scope="module")
def byte_dataset():
    """Tokens 5.. with a known UTF-8 length each (token id % 3 + 1 bytes), ids 0 (eos) and 4 (pad) special."""
    g = torch.Generator().manual_seed(0)
    stream = torch.randint(5, 64, (3000,), generator=g)
    stream[::50] = 0                                              # documents end with <|eos|>
    token_bytes = torch.tensor([0, 1, 1, 1, 0] + [i % 3 + 1 for i in range(5, 64)])
    return TokenDataset(stream[:2600].int(), stream[2600:].int(), token_bytes=token_bytes, val_bytes=None,
                        compressors={"xz": 1.5, "bz2": 1.6, "zlib": 1.9}, eos_id=0, pad_id=4)


def test_rows_carry_flops_and_mfu(tmp_path, dataset):
    res = train(tc(out_dir=str(tmp_path), mfu=True), dataset=dataset, progress=False,
                model_cfg=ModelConfig(**TOY_MODEL))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    fpt = flops_per_token(ModelConfig(**TOY_MODEL), 16)["total"]
    assert res.flops_per_token == fpt and res.peak_flops > 0
    for r in rows:
        assert r["flops_per_s"] == pytest.approx(r["tokens_per_s"] * fpt)
        assert r["mfu"] == pytest.approx(r["flops_per_s"] / res.peak_flops)
    assert res.dtype == ("bf16" if resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16 else "fp32")


def test_matmul_peak_is_measured_once_per_process(monkeypatch, dataset):
    # notebooks call train() many times (ablations over variants and seeds): the seconds of GEMMs behind the
    # peak run once per process, dtype, device and thread count, not once per call
    import dsv3_edu.flops as flops
    calls = []

    def fake_measure(dtype, device, *args, **kwargs):
        calls.append((dtype, device))
        return {"peak": 1e12}

    monkeypatch.setattr(flops, "measure_matmul_peak", fake_measure)
    flops._cached_peak.cache_clear()
    try:
        runs = [train(tc(mfu=True, seed=s), dataset=dataset, progress=False, model_cfg=ModelConfig(**TOY_MODEL))
                for s in (0, 1)]
        assert len(calls) == 1 and [r.peak_flops for r in runs] == [1e12, 1e12]
        assert train(tc(), dataset=dataset, progress=False, model_cfg=ModelConfig(**TOY_MODEL)).peak_flops is None
        assert len(calls) == 1                                   # mfu=False measures nothing
        other = torch.bfloat16 if calls[0][0] == torch.float32 else torch.float32
        flops.matmul_peak(other, "cpu")
        assert len(calls) == 2                                   # another dtype is another peak
    finally:
        flops._cached_peak.cache_clear()                         # later tests measure the real peak


def test_evaluate_bits_per_byte_and_acceptance_by_hand(byte_dataset):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**TOY_MODEL))
    c = tc(eval_batches=3)
    got = evaluate(model, byte_dataset, c, torch.device("cpu"))
    nats, n_bytes, tokens = 0.0, 0, 0
    batches = list(byte_dataset.eval_batches("val", c.batch_size, c.seq_len))[:3]
    model.eval()
    with torch.no_grad():
        for x, y in batches:
            logits = model(x).logits
            keep = y != -1
            nats += torch.nn.functional.cross_entropy(logits[keep], y[keep], reduction="sum").item()
            tokens += int(keep.sum())
            n_bytes += sum(int(t) % 3 + 1 for t in y[keep].tolist() if t not in (0, 4))
    assert got["val_loss"] == pytest.approx(nats / tokens, rel=1e-5)
    assert got["val_bpb"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)
    assert (got["xz"], got["bz2"], got["zlib"]) == (1.5, 1.6, 1.9)
    # the same teacher-forced acceptance as dsv3_edu.evaluate.mtp_acceptance on the same batches
    assert got["mtp_acceptance"] == pytest.approx(mtp_acceptance(model, batches)["acceptance"])


def test_no_mtp_no_acceptance(byte_dataset):
    model = Transformer(ModelConfig(**{**TOY_MODEL, "n_mtp": 0}))
    assert "mtp_acceptance" not in evaluate(model, byte_dataset, tc(), torch.device("cpu"))


def test_dtype_field():
    with pytest.raises(ValueError, match="dtype must be one of"):
        tc(dtype="half").validate()
    assert TrainConfig.from_dict({"bf16": False}).dtype == "fp32"     # run folders from before the field
    assert TrainConfig.from_dict({"bf16": True}).dtype == "auto"


def test_forced_bf16_trains_on_any_cpu(dataset):
    """--dtype bf16 runs (emulated where the CPU lacks native bf16) with fp32 master weights."""
    res = train(tc(dtype="bf16", steps=2, log_every=1, eval_every=2), dataset=dataset, progress=False,
                model_cfg=ModelConfig(**TOY_MODEL))
    assert res.dtype == "bf16" and math.isfinite(res.final_val_loss)
    assert all(p.dtype == torch.float32 for p in res.model.parameters())


def test_gpu_recipe_only_on_cuda():
    from dsv3_edu.train import CPU_RECIPE, GPU_RECIPE, TrainConfig, recipe_for
    assert recipe_for(torch.device("cpu")) == ("CPU", CPU_RECIPE) and CPU_RECIPE["preset"] == "cpu"
    TrainConfig(**CPU_RECIPE).validate()
    name, recipe = recipe_for(torch.device("cuda"))
    assert name == "GPU" and recipe == GPU_RECIPE and recipe["preset"] == "small"
    TrainConfig(**recipe).validate()
