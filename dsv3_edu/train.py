"""The trainer: AdamW, warmup + cosine, gradient clipping, the aux-loss-free bias update every step, MTP,
safetensors checkpoints with exact resume, JSONL metrics and plots.

    python -m dsv3_edu train --preset tiny --steps 300        # the default run, minutes on a laptop CPU
    python -m dsv3_edu train --resume runs/tiny               # continue the same run exactly

From Python (what the notebooks use)::

    from dsv3_edu.train import TrainConfig, train
    result = train(TrainConfig(preset="nano", steps=200))
    result.model, result.history, result.final_val_loss
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .balance import update_biases
from .config import ModelConfig, get_config
from .model import Transformer
from .runtime import autocast, get_device, seed_everything


@dataclass
class TrainConfig:
    preset: str = "tiny"                  # model preset or config JSON path
    model_overrides: dict = field(default_factory=dict)   # e.g. {"n_mtp": 0, "balance": "aux_loss"}
    steps: int = 300
    batch_size: int = 16
    seq_len: int = 128
    grad_accum: int = 1
    lr: float = 2e-3                      # peak; small models take a larger lr than the report's 2.2e-4
    min_lr_ratio: float = 0.1             # cosine decays to lr * min_lr_ratio (the report: 2.2e-4 -> 2.2e-5)
    warmup_steps: int = 40
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    log_every: int = 10
    save_every: int = 200
    seed: int = 0
    device: str = "auto"
    bf16: bool = True                     # bf16 autocast where the hardware has it (CUDA); ignored on CPU
    out_dir: str | None = "runs/tiny"     # None: no files (notebooks' quick experiments)
    data_source: str | None = None        # None: the default Python-stdlib corpus; else a file or folder
    data_max_bytes: int | None = None     # cap for the default corpus (None: the data package default)
    plots: bool = True

    def validate(self) -> None:
        for f in ("steps", "batch_size", "seq_len", "grad_accum", "eval_batches", "log_every"):
            if getattr(self, f) < 1:
                raise ValueError(f"TrainConfig: {f} must be >= 1, got {getattr(self, f)}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig: lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def model_config(self) -> ModelConfig:
        return get_config(self.preset, **self.model_overrides)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class TrainResult:
    model: Transformer
    history: list[dict]                   # one dict per logged step (and eval rows with "val_loss")
    final_val_loss: float
    tokens_per_s: float
    out_dir: Path | None
    expert_loads: list[torch.Tensor]      # tokens per expert per MoE gate over the last log interval


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warmup to lr, then cosine to lr * min_lr_ratio at the last step."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def make_optimizer(model: Transformer, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms (1-D weights) and the embedding, as is usual."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name.startswith("embed") else decay).append(p)
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2))


def load_data(tc: TrainConfig, vocab_size: int):
    """The packed token streams (built once, then cached under data/build)."""
    from .data import build_dataset
    kw = {} if tc.data_max_bytes is None else {"max_bytes": tc.data_max_bytes}
    built = build_dataset(source=tc.data_source, vocab_size=vocab_size, progress=False, **kw)
    return built.dataset(), built.tokenizer


@torch.no_grad()
def evaluate(model: Transformer, dataset, tc: TrainConfig, device) -> float:
    """Mean next-token loss over the first ``eval_batches`` validation batches (always the same ones)."""
    was_training = model.training
    model.eval()
    batches = dataset.sequential("val", tc.batch_size, tc.seq_len, device=device)
    n = min(tc.eval_batches, batches.batches_per_epoch)
    losses = []
    for _ in range(n):
        x, y = next(batches)
        with autocast(device, tc.bf16):
            losses.append(model(x, y).main_loss.item())
    model.train(was_training)
    return sum(losses) / len(losses)


# ----------------------------------------------------------------------------- checkpoints
CKPT = "checkpoint"


def save_checkpoint(path: Path, model: Transformer, opt, step: int, tc: TrainConfig, batches,
                    history: list[dict]) -> None:
    """model.safetensors (weights + selection biases), config.json, train_config.json, train_state.pt
    (optimizer, step, data position, RNG). Written to a temp folder, then swapped in atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"step": str(step)})
    model.cfg.save(tmp / "config.json")
    (tmp / "train_config.json").write_text(json.dumps(asdict(tc), indent=2) + "\n")
    torch.save({"step": step, "optimizer": opt.state_dict(), "data": batches.state_dict(),
                "torch_rng": torch.get_rng_state(), "history": history}, tmp / "train_state.pt")
    if path.exists():
        old = path.with_name(path.name + ".old")
        path.rename(old)
        tmp.rename(path)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        tmp.rename(path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Transformer:
    """A trained model from a run folder (``runs/tiny``) or its checkpoint folder."""
    path = Path(path)
    if (path / CKPT).is_dir():
        path = path / CKPT
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (expected model.safetensors and config.json)")
    cfg = ModelConfig.load(path / "config.json")
    model = Transformer(cfg)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return model.to(device).eval()


# ----------------------------------------------------------------------------- the loop
def train(tc: TrainConfig, dataset=None, resume: str | Path | None = None, progress: bool = True,
          model_cfg: ModelConfig | None = None, stop_after: int | None = None) -> TrainResult:
    """Train a model; ``dataset`` is a ``dsv3_edu.data.TokenDataset`` (default: the built default corpus).

    ``stop_after`` ends the run early at that step, as an interruption would (the schedule still runs to
    ``tc.steps``), after saving a checkpoint; resume with ``resume=out_dir``.
    """
    resume_dir = None
    if resume is not None:
        resume_dir = Path(resume) / CKPT if (Path(resume) / CKPT).is_dir() else Path(resume)
        if not (resume_dir / "train_state.pt").is_file():
            raise FileNotFoundError(f"cannot resume: no train_state.pt under {resume}")
        saved = TrainConfig.from_dict(json.loads((resume_dir / "train_config.json").read_text()))
        saved.steps, saved.out_dir = tc.steps, tc.out_dir   # a resumed run may be extended or moved
        tc = saved
        model_cfg = ModelConfig.load(resume_dir / "config.json")
    tc.validate()
    cfg = model_cfg or tc.model_config()
    if tc.seq_len > cfg.max_seq_len:
        raise ValueError(f"seq_len {tc.seq_len} exceeds the model's max_seq_len {cfg.max_seq_len}")
    device = get_device(tc.device)
    seed_everything(tc.seed)
    if dataset is None:
        dataset, _ = load_data(tc, cfg.vocab_size)
    model = Transformer(cfg).to(device)
    opt = make_optimizer(model, tc)
    batches = dataset.random("train", tc.batch_size, tc.seq_len, seed=tc.seed, device=device)
    step, history = 0, []
    if resume_dir is not None:
        model.load_state_dict(load_file(str(resume_dir / "model.safetensors"), device=str(device)))
        st = torch.load(resume_dir / "train_state.pt", weights_only=False)
        opt.load_state_dict(st["optimizer"])
        batches.load_state_dict(st["data"])
        torch.set_rng_state(st["torch_rng"])
        step, history = st["step"], st["history"]
    out_dir = Path(tc.out_dir) if tc.out_dir else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    log_f = open(out_dir / "metrics.jsonl", "a") if out_dir else None
    gamma = cfg.bias_update_speed if cfg.balance == "aux_free" else 0.0
    tokens_per_step = tc.batch_size * tc.seq_len * tc.grad_accum

    last = tc.steps if stop_after is None else min(stop_after, tc.steps)
    bar = _progress(range(step, last), progress, initial=step, total=tc.steps)
    model.train()
    t_start, tokens_seen, loads = time.perf_counter(), 0, []
    acc = {"loss": 0.0, "main": 0.0, "mtp": 0.0, "bal": 0.0, "n": 0}
    t_log = time.perf_counter()
    try:
        for step in bar:
            lr = lr_at(step, tc)
            for g in opt.param_groups:
                g["lr"] = lr
            for _ in range(tc.grad_accum):
                x, y = next(batches)
                with autocast(device, tc.bf16):
                    out = model(x, y)
                if not torch.isfinite(out.loss):
                    raise TrainingDiverged(_diverged_msg(step, out.loss.item(), out_dir, tc))
                (out.loss / tc.grad_accum).backward()
                acc["loss"] += out.loss.item() / tc.grad_accum
                acc["main"] += out.main_loss.item() / tc.grad_accum
                acc["mtp"] += (out.mtp_loss.item() if out.mtp_loss is not None else 0.0) / tc.grad_accum
                acc["bal"] += (out.balance_loss.item() if out.balance_loss is not None else 0.0) / tc.grad_accum
            acc["n"] += 1
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            if not torch.isfinite(grad_norm):
                raise TrainingDiverged(_diverged_msg(step, float("nan"), out_dir, tc, what="gradient norm"))
            opt.step()
            opt.zero_grad(set_to_none=True)
            bal = update_biases(model, gamma)          # the aux-loss-free sign rule, outside autograd
            loads = bal["loads"]
            tokens_seen += tokens_per_step
            done = step + 1
            if done % tc.log_every == 0 or done == tc.steps:
                now = time.perf_counter()
                tps = tokens_per_step * acc["n"] / (now - t_log)
                row = {"step": done, "lr": lr, "loss": acc["loss"] / acc["n"], "main_loss": acc["main"] / acc["n"],
                       "mtp_loss": acc["mtp"] / acc["n"], "balance_loss": acc["bal"] / acc["n"],
                       "grad_norm": grad_norm.item(), "maxvio": bal["maxvio"], "bias_min": bal["bias_min"],
                       "bias_max": bal["bias_max"], "tokens_per_s": tps, "tokens": done * tokens_per_step}
                if done % tc.eval_every == 0 or done == tc.steps:
                    row["val_loss"] = evaluate(model, dataset, tc, device)
                history.append(row)
                if log_f:
                    log_f.write(json.dumps(row) + "\n")
                    log_f.flush()
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{row['main_loss']:.3f}", tok_s=f"{tps:,.0f}",
                                    **({"val": f"{row['val_loss']:.3f}"} if "val_loss" in row else {}))
                acc = {k: 0.0 if k != "n" else 0 for k in acc}
                t_log = time.perf_counter()
            if out_dir and (done % tc.save_every == 0 or done == last):
                save_checkpoint(out_dir / CKPT, model, opt, done, tc, batches, history)
    finally:
        if log_f:
            log_f.close()
    elapsed = time.perf_counter() - t_start
    val_rows = [r["val_loss"] for r in history if "val_loss" in r]
    final_val = val_rows[-1] if val_rows else evaluate(model, dataset, tc, device)
    result = TrainResult(model=model.eval(), history=history, final_val_loss=final_val,
                         tokens_per_s=tokens_seen / elapsed if elapsed > 0 else 0.0, out_dir=out_dir,
                         expert_loads=loads)
    if out_dir and tc.plots:
        from .viz.training import plot_expert_load, plot_loss_curves
        plot_loss_curves(history).savefig(out_dir / "loss.png", dpi=110, bbox_inches="tight")
        if loads:
            plot_expert_load(loads).savefig(out_dir / "expert_load.png", dpi=110, bbox_inches="tight")
    return result


def _progress(it, enabled: bool, **kw):
    if not enabled:
        return it
    from .progress import progress
    return progress(it, desc="train", unit="step", **kw)


def _diverged_msg(step: int, value: float, out_dir: Path | None, tc: TrainConfig, what: str = "loss") -> str:
    where = (f"the last good checkpoint is kept at {out_dir / CKPT}" if out_dir and (out_dir / CKPT).exists()
             else "no checkpoint was written yet")
    return (f"training stopped: the {what} became {value} at step {step}; {where}. "
            f"Try a lower learning rate (now {tc.lr}) or more warmup steps (now {tc.warmup_steps}).")
