"""Trainer, checkpoints, exact resume, divergence handling, and decoding."""
import json

import pytest
import torch
from conftest import toy_config

from dsv3_edu.generate import generate, sample_next, speculative_generate
from dsv3_edu.train import TrainConfig, TrainingDiverged, load_model, lr_at, train


def tc(tmp_path=None, **kw) -> TrainConfig:
    d = dict(steps=12, batch_size=4, seq_len=16, warmup_steps=2, eval_every=6, eval_batches=2, log_every=1,
             save_every=6, lr=3e-3, out_dir=str(tmp_path) if tmp_path else None, plots=False, model_overrides={})
    d.update(kw)
    return TrainConfig(**d)


cfg = toy_config


def test_lr_schedule():
    c = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0) and lr_at(100, c) == pytest.approx(0.1)
    assert lr_at(55, c) == pytest.approx(0.55)


def test_training_learns_and_logs(tmp_path, dataset):
    res = train(tc(tmp_path, steps=40, eval_every=20), dataset=dataset, progress=False, model_cfg=cfg())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and rows[-1]["step"] == 40
    assert rows[-1]["main_loss"] < rows[0]["main_loss"] - 1.0
    assert {"lr", "mtp_loss", "maxvio", "bias_min", "bias_max", "tokens_per_s"} <= set(rows[0])
    assert len(rows[0]["maxvio"]) == 2                      # one MoE layer + the MTP block's MoE
    assert rows[-1]["bias_max"] > 0 > rows[-1]["bias_min"]  # the aux-loss-free biases moved
    assert res.final_val_loss == rows[-1]["val_loss"]
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.png"))                 # the library writes no pictures; the CLI does:
    from dsv3_edu.__main__ import _save_training_plots
    assert _save_training_plots(res) == ["loss.png", "expert_load.png"]
    assert (tmp_path / "loss.png").stat().st_size > 0 and (tmp_path / "expert_load.png").stat().st_size > 0


def test_resume_is_exact(tmp_path, dataset):
    full = train(tc(tmp_path / "a"), dataset=dataset, progress=False, model_cfg=cfg())
    part = train(tc(tmp_path / "b", save_every=100), dataset=dataset, progress=False, model_cfg=cfg(), stop_after=7)
    assert part.history[-1]["step"] == 7
    resumed = train(tc(tmp_path / "b", steps=12), dataset=dataset, progress=False, resume=tmp_path / "b")
    losses = lambda h: [r["loss"] for r in h]  # noqa: E731
    assert losses(resumed.history) == losses(full.history)
    for (k, v), (_, v2) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(v, v2), k
    loaded = load_model(tmp_path / "b")
    assert torch.equal(loaded.layers[1].ffn.gate.bias, full.model.layers[1].ffn.gate.bias)
    assert loaded.layers[1].ffn.gate.bias.abs().sum() > 0


def test_divergence_stops_clearly_and_keeps_checkpoint(tmp_path, dataset):
    train(tc(tmp_path), dataset=dataset, progress=False, model_cfg=cfg(), stop_after=6)
    before = (tmp_path / "checkpoint" / "model.safetensors").read_bytes()
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(tc(tmp_path, lr=1e12, warmup_steps=1, save_every=100), dataset=dataset, progress=False, model_cfg=cfg())
    assert (tmp_path / "checkpoint" / "model.safetensors").read_bytes() == before


def test_train_config_from_dict_rejects_unknown_keys():
    assert TrainConfig.from_dict({"steps": 5}).steps == 5
    with pytest.raises(ValueError, match=r"unknown fields \['stpes'\]"):
        TrainConfig.from_dict({"stpes": 5})


def test_bad_configs(dataset):
    with pytest.raises(ValueError, match="seq_len"):
        train(tc(seq_len=128), dataset=dataset, progress=False, model_cfg=cfg())
    with pytest.raises(ValueError, match="steps"):
        train(tc(steps=0), dataset=dataset, progress=False, model_cfg=cfg())
    with pytest.raises(FileNotFoundError):
        train(tc(), dataset=dataset, resume="/nonexistent")


def test_seeded_runs_repeat(dataset):
    a = train(tc(steps=5), dataset=dataset, progress=False, model_cfg=cfg())
    b = train(tc(steps=5), dataset=dataset, progress=False, model_cfg=cfg())
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]


# ----------------------------------------------------------------------------- decoding
@pytest.fixture(scope="module")
def trained(dataset):
    return train(tc(steps=60, lr=5e-3), dataset=dataset, progress=False, model_cfg=cfg()).model


def test_cached_generation_equals_uncached(trained):
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    a = generate(trained, prompt, 20, temperature=0)
    b = generate(trained, prompt, 20, temperature=0, use_cache=False)
    c = generate(trained, prompt, 20, temperature=0, attn_mode="naive")
    assert torch.equal(a, b) and torch.equal(a, c) and a.shape == (1, 25)


def test_sampling_is_seeded(trained):
    prompt = torch.tensor([[1, 2, 3]])
    a = generate(trained, prompt, 15, temperature=1.0, top_k=10, seed=3)
    b = generate(trained, prompt, 15, temperature=1.0, top_k=10, seed=3)
    assert torch.equal(a, b)


def test_top_k_top_p_restrict_support():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=2, generator=g).tolist()) == {2, 3}
    assert set(sample_next(logits, 1.0, top_p=0.5, generator=g).tolist()) == {3}   # p(3) = 0.64 > 0.5
    with pytest.raises(ValueError):
        sample_next(logits, -1.0)


def test_speculative_mtp_equals_greedy(trained):
    for prompt in (torch.tensor([[1, 2, 3, 4]]), torch.tensor([[5]]), torch.tensor([[16, 0, 1, 2, 3, 4, 5, 6]])):
        plain = generate(trained, prompt, 40, temperature=0)
        spec, st = speculative_generate(trained, prompt, 40)
        assert torch.equal(plain, spec)
        assert st.drafted > 0 and 0 <= st.accepted <= st.drafted
        assert st.main_forwards < 40 + 1 or st.accepted == 0
    assert st.acceptance_rate > 0.3   # the pattern is learnable: the drafter must be right often


def test_run_record_json_and_plot(tmp_path, dataset):
    """``train --record FILE``: the run's figures as JSON (the README's default run is results/default_run.json),
    drawn by viz.training.plot_bits_per_byte."""
    from dsv3_edu.__main__ import _write_record
    res = train(tc(), dataset=dataset, progress=False, model_cfg=cfg())
    likeness = {"samples": {"share": 0.5, "parsed": 1, "statements": 2}, "heldout": {"share": 1.0}}
    _write_record(str(tmp_path / "run.json"), res, tc(), likeness, wall_s=12.34)
    rec = json.loads((tmp_path / "run.json").read_text())
    assert rec["schema"] == "dsv3_edu.run/1" and rec["wall_s"] == 12.3 and rec["command"].startswith("python -m")
    assert rec["final_eval"]["val_loss"] == res.final_val_loss and rec["python_likeness"] == likeness
    assert rec["params"] == res.model.num_params() and rec["train_config"]["steps"] == 12
    assert [r["step"] for r in rec["curve"]] == [r["step"] for r in res.history]
    assert {"cpu", "cores", "torch"} <= set(rec["machine"])
    import matplotlib
    matplotlib.use("Agg")
    from dsv3_edu.viz.training import plot_bits_per_byte
    rec["curve"] = [{"tokens": 100, "val_bpb": 3.0}, {"tokens": 200, "val_bpb": 2.0}]
    rec["final_eval"].update(xz=1.5, bz2=1.6)
    ax = plot_bits_per_byte(rec).axes[0]
    assert [line.get_ydata()[0] for line in ax.lines] == [3.0, 1.5, 1.6]      # the model, xz, bz2 (no zlib given)
    longer = {**rec, "curve": [{"tokens": 100, "val_bpb": 3.0}, {"tokens": 800, "val_bpb": 1.4}],
              "train_config": {**rec["train_config"], "steps": 48}}
    ax = plot_bits_per_byte([rec, longer]).axes[0]                             # two runs on one log-token axis
    assert [line.get_ydata()[-1] for line in ax.lines] == [2.0, 1.4, 1.5, 1.6]
    assert ax.get_xscale() == "log" and "48 steps" in ax.get_legend_handles_labels()[1][1]
