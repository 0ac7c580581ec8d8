"""The trainer: AdamW, warmup + cosine, gradient clipping, the aux-loss-free bias update every step, MTP,
safetensors checkpoints with exact resume and JSONL metrics (the command line draws the plots).

    python -m dsv3_edu train                                  # the default run (docs/recipe.md): preset cpu
    python -m dsv3_edu train --resume runs/default            # continue the same run exactly

From Python (what the notebooks use)::

    from dsv3_edu.train import TrainConfig, train
    result = train(TrainConfig(preset="nano", steps=200))
    result.model, result.history, result.final_val_loss
"""
from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import distributed
from .balance import balance_stats, reduce_loads, update_biases
from .config import ModelConfig, get_config
from .evaluate import bits_per_byte
from .flops import flops_per_token, matmul_peak
from .model import Transformer
from .model.transformer import IGNORE_INDEX
from .runtime import DTYPES, autocast, get_device, resolve_dtype, seed_everything


@dataclass
class TrainConfig:
    preset: str = "cpu"                   # model preset or config JSON path (the default recipe: docs/recipe.md)
    model_overrides: dict = field(default_factory=dict)   # e.g. {"n_mtp": 0, "balance": "aux_loss"}
    steps: int = 500
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
    dtype: str = "auto"                   # auto: bf16 autocast (fp32 master weights) where the hardware computes
                                          # bf16 natively (CUDA, CPUs with AVX512-BF16/AMX), else fp32; or fp32, bf16
    mfu: bool = True                      # measure this machine's matmul peak at the start (seconds) and log MFU
    out_dir: str | None = "runs/default"  # None: no files (notebooks' quick experiments)
    data_source: str | None = None        # None: the default Python-stdlib corpus; else a file or folder
    data_max_bytes: int | None = None     # cap for the default corpus (None: the data package default)
    plots: bool = True                    # the command line writes loss.png and expert_load.png to out_dir
    world_size: int = 1                   # processes of the run (data parallel, set by train(); recorded only)

    def validate(self) -> None:
        for f in ("steps", "batch_size", "seq_len", "grad_accum", "eval_batches", "log_every"):
            if getattr(self, f) < 1:
                raise ValueError(f"TrainConfig: {f} must be >= 1, got {getattr(self, f)}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig: lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.dtype not in DTYPES:
            raise ValueError(f"TrainConfig: dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def model_config(self) -> ModelConfig:
        return get_config(self.preset, **self.model_overrides)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        if "bf16" in d:      # run folders written before ``dtype``: bf16=True meant "where the hardware has it"
            d = dict(d)
            d.setdefault("dtype", "auto" if d.pop("bf16") else "fp32")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown fields {unknown}; known fields are {sorted(known)}")
        return cls(**d)


# The default command's recipe per device kind (docs/recipe.md: chosen by benchmarks/sweep_recipe.py at equal
# wall-clock): the command line fills in the fields the user did not set, and prints which recipe it used.
# TrainConfig's own defaults stay what the notebooks were written against.
CPU_RECIPE = {"preset": "cpu", "batch_size": 16, "seq_len": 128, "steps": 1200, "lr": 4e-3, "warmup_steps": 40,
              "eval_every": 200, "eval_batches": 16, "save_every": 400, "log_every": 20}
GPU_RECIPE = {"preset": "small", "batch_size": 32, "seq_len": 512, "steps": 2000, "lr": 1.5e-3, "warmup_steps": 100,
              "eval_every": 250, "save_every": 500, "log_every": 25}


def recipe_for(device: torch.device) -> tuple[str, dict]:
    """(name, TrainConfig fields) of the default run on ``device``: the GPU recipe on CUDA, else the CPU one."""
    if device.type == "cuda":
        return "GPU", dict(GPU_RECIPE)
    return "CPU", dict(CPU_RECIPE)


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class TrainResult:
    model: Transformer
    history: list[dict]                   # one dict per logged step (and eval rows with "val_loss")
    final_val_loss: float
    tokens_per_s: float
    out_dir: Path | None
    expert_loads: list[torch.Tensor]      # tokens per expert per MoE gate in the last step (model.gates() order)
    final_eval: dict = field(default_factory=dict)   # the last evaluation: val_loss, val_bpb, xz, ..., mtp_acceptance
    dtype: str = "fp32"                   # what the run computed in ("bf16" = bf16 autocast, fp32 master weights)
    flops_per_token: float = 0.0          # training FLOPs per token (dsv3_edu.flops)
    peak_flops: float | None = None       # the measured matmul peak in that dtype (None: not measured)
    dataset: object = None                # the TokenDataset it trained on
    tokenizer: object = None              # the tokenizer, when train() built the data itself (the command line)

    @property
    def mfu(self) -> float | None:
        """Whole-run model FLOPs utilisation (evaluation and checkpoint time included in the denominator)."""
        return self.tokens_per_s * self.flops_per_token / self.peak_flops if self.peak_flops else None


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
def evaluate(model: Transformer, dataset, tc: TrainConfig, device) -> dict:
    """Validation metrics over the first ``eval_batches`` validation batches (always the same ones), as a dict
    of Python numbers that goes into the metrics row:

    * ``val_loss``: mean next-token (main) loss, nats per token;
    * ``val_bpb``: bits per byte, the summed loss / ln 2 / UTF-8 bytes of the tokens scored (when the dataset
      knows its tokens' bytes), next to the dataset's compressor baselines ``xz``, ``bz2``, ``zlib`` (bits/byte
      of the whole validation text, from the data manifest) when known;
    * ``mtp_acceptance`` (models with MTP): teacher-forced draft acceptance, how often the depth-1 MTP guess
      for t+2 equals the main model's own guess one position later, what speculative decoding accepts.
    """
    was_training = model.training
    model.eval()
    dtype = resolve_dtype(tc.dtype, device)
    if getattr(dataset, "eos_id", None) is not None and getattr(dataset, "pad_id", None) is not None:
        batches = dataset.eval_batches("val", tc.batch_size, tc.seq_len, device=device)   # whole documents
        n = tc.eval_batches
    else:                                                  # a bare TokenDataset (tests): plain windows, one pass
        batches = dataset.sequential("val", tc.batch_size, tc.seq_len, device=device)
        n = min(tc.eval_batches, batches.batches_per_epoch)
    with_mtp = model.cfg.n_mtp > 0
    knows_bytes = getattr(dataset, "token_bytes", None) is not None
    sums, n_bytes = [], 0                                  # per batch: (nats, tokens, agree, draft positions)
    for x, y in itertools.islice(batches, n):
        with autocast(device, dtype):
            out = model(x, y, with_mtp=with_mtp)
        real = (y != IGNORE_INDEX).sum()
        row = [out.main_loss.float() * real, real.float()]
        if with_mtp and out.mtp_logits:
            keep = y[:, 1:] != IGNORE_INDEX                                    # t_{i+2} is real text
            agree = (out.mtp_logits[0].argmax(-1) == out.logits[:, 1:].argmax(-1)) & keep
            row += [agree.sum().float(), keep.sum().float()]
        sums.append(torch.stack(row))
        n_bytes += dataset.target_bytes(y) if knows_bytes else 0
    model.train(was_training)
    tot = torch.stack(sums).sum(0).tolist()                # one host sync
    metrics = {"val_loss": tot[0] / tot[1]}
    if n_bytes:
        metrics["val_bpb"] = bits_per_byte(tot[0], n_bytes)
        metrics.update({k: v for k, v in getattr(dataset, "compressors", {}).items() if k in ("xz", "bz2", "zlib")})
    if len(tot) == 4 and tot[3] > 0:
        metrics["mtp_acceptance"] = tot[2] / tot[3]
    return metrics


# ----------------------------------------------------------------------------- checkpoints
CKPT = "checkpoint"


def save_checkpoint(path: Path, model: Transformer, opt, step: int, tc: TrainConfig, batches,
                    history: list[dict], tokenizer=None) -> None:
    """model.safetensors (weights + selection biases), config.json, train_config.json, train_state.pt
    (optimizer, step, data position, RNG). Written to a temp folder, then swapped in atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"step": str(step)})
    model.cfg.save(tmp / "config.json")
    if tokenizer is not None:                # the ids belong to it: generate reads it back (vocab sizes differ)
        from .data import save_tokenizer
        save_tokenizer(tokenizer, tmp)
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


def checkpoint_tokenizer(run_dir) -> Path | None:
    """The tokenizer.json saved with a run's checkpoint (``save_checkpoint``), or None (the packaged vocab-8192
    one) if there is none."""
    if run_dir is None:
        return None
    for p in (Path(run_dir) / CKPT / "tokenizer.json", Path(run_dir) / "tokenizer.json"):
        if p.is_file():
            return p
    return None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Transformer:
    """A trained model from a run folder (``runs/default``) or its checkpoint folder.

    Bad checkpoints fail with one line naming the file: missing, corrupt or truncated, weights that do not fit
    config.json (another model's), or weights holding NaN / inf."""
    path = Path(path)
    if (path / CKPT).is_dir():
        path = path / CKPT
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (expected model.safetensors and config.json)")
    cfg = ModelConfig.load(path / "config.json")
    model = Transformer(cfg)
    load_weights(model, path / "model.safetensors")
    return model.to(device).eval()


def load_weights(model: Transformer, file: Path, device: str | torch.device = "cpu") -> None:
    """model.safetensors into ``model``, checked first: readable, the same names and shapes, finite values."""
    try:
        sd = load_file(str(file), device=str(device))
    except Exception as e:  # noqa: BLE001 (safetensors raises its own SafetensorError, not an OSError)
        raise ValueError(f"checkpoint {file} is corrupt or truncated ({e})") from None
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - sd.keys()), sorted(sd.keys() - own.keys())
    wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(own[k].shape)}" for k in own.keys() & sd.keys()
             if sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        what = "; ".join(f"{n} {len(v)}: {', '.join(sorted(v)[:3])}{', ...' if len(v) > 3 else ''}"
                         for n, v in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if v)
        raise ValueError(f"checkpoint {file} does not fit its config.json (weights of another model?): {what}")
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"checkpoint {file} holds NaN or inf in {len(bad)} tensors, e.g. {bad[0]}")
    model.load_state_dict(sd)


# ----------------------------------------------------------------------------- the loop
def train(tc: TrainConfig, dataset=None, resume: str | Path | None = None, progress: bool = True,
          model_cfg: ModelConfig | None = None, stop_after: int | None = None) -> TrainResult:
    """Train a model; ``dataset`` is a ``dsv3_edu.data.TokenDataset`` (default: the built default corpus).

    ``stop_after`` ends the run early at that step, as an interruption would (the schedule still runs to
    ``tc.steps``), after saving a checkpoint; resume with ``resume=out_dir``.

    Under ``torchrun`` (or inside an initialised process group) this trains data-parallel: ``batch_size`` is the
    global batch, split over the ranks; see ``dsv3_edu.distributed``.
    """
    env, rank_device = distributed.setup()    # one process: (DistEnv(), None)
    try:
        result = _train(tc, env, rank_device, dataset, resume, progress, model_cfg, stop_after)
        distributed.barrier(env)       # rank 0's last checkpoint is on disk before any rank goes on
        return result
    finally:
        distributed.cleanup(env)


def _train(tc: TrainConfig, env: distributed.DistEnv, rank_device, dataset, resume, progress: bool,
           model_cfg: ModelConfig | None, stop_after: int | None) -> TrainResult:
    resume_dir = _resume_dir(resume)
    if resume_dir is not None:
        tc, model_cfg = _restore_configs(resume_dir, tc)
    tc.validate()
    cfg = model_cfg or tc.model_config()
    if tc.seq_len > cfg.max_seq_len:
        raise ValueError(f"seq_len {tc.seq_len} exceeds the model's max_seq_len {cfg.max_seq_len}")
    tc = replace(tc, world_size=env.world_size)           # recorded in the checkpoint's train_config.json
    distributed.check_global_batch(tc.batch_size, env.world_size)
    device = rank_device or get_device(tc.device)
    seed_everything(tc.seed)
    tokenizer = None
    if dataset is None:
        dataset, tokenizer = load_data(tc, cfg.vocab_size)
    model = Transformer(cfg).to(device)
    opt = make_optimizer(model, tc)
    batches = dataset.random("train", tc.batch_size, tc.seq_len, seed=tc.seed, device=device)
    if env.distributed:       # every rank draws the global batch and keeps its rows
        batches = distributed.ShardedBatches(dataset.random("train", tc.batch_size, tc.seq_len, seed=tc.seed),
                                             env, device)
    step, history = 0, []
    if resume_dir is not None:
        step, history = restore_checkpoint(resume_dir, model, opt, batches, device)
    out_dir = Path(tc.out_dir) if tc.out_dir and env.is_main else None     # rank 0 writes the files
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    gamma = cfg.bias_update_speed if cfg.balance == "aux_free" else 0.0
    tokens_per_step = tc.batch_size * tc.seq_len * tc.grad_accum
    dtype = resolve_dtype(tc.dtype, device)
    fpt = flops_per_token(cfg, tc.seq_len)["total"]
    peak = matmul_peak(dtype, device) if tc.mfu else None

    last = tc.steps if stop_after is None else min(stop_after, tc.steps)
    bar = _progress(range(step, last), progress and env.is_main, initial=step, total=tc.steps)
    log = MetricsLog(out_dir, tc, tokens_per_step, fpt, peak)
    model.train()
    ddp_model = distributed.wrap_ddp(model, env, device)     # the model itself with one process
    t_start, loads = time.perf_counter(), []
    try:
        for step in bar:
            lr = lr_at(step, tc)
            stats = train_step(ddp_model, opt, batches, tc, lr, device)
            stats.losses = distributed.mean_over_ranks(stats.losses, env)   # log the global batch's losses
            loads = reduce_loads(stats.loads)  # data/expert parallelism: the one place loads are summed over ranks
            update_biases(model, loads, gamma)  # the aux-loss-free sign rule, outside autograd
            log.add(step, lr, stats)
            done = step + 1
            if done % tc.log_every == 0 or done == tc.steps:
                row = log.row(done, balance_stats(model, loads))    # host syncs happen only here, per interval
                if done % tc.eval_every == 0 or done == tc.steps:
                    row.update(evaluate(model, dataset, tc, device))
                log.write(row, history, bar)
            if out_dir and (done % tc.save_every == 0 or done == last):
                log.check_finite()                                      # never save a diverged model
                save_checkpoint(out_dir / CKPT, model, opt, done, tc, batches, history, tokenizer)
        log.check_finite()
    finally:
        log.close()
    elapsed = time.perf_counter() - t_start
    val_rows = [r for r in history if "val_loss" in r]
    final = val_rows[-1] if val_rows else evaluate(model, dataset, tc, device)
    final_eval = {k: v for k, v in final.items() if k.startswith(("val_", "mtp_acc")) or k in ("xz", "bz2", "zlib")}
    return TrainResult(model=model.eval(), history=history, final_val_loss=final["val_loss"],
                       tokens_per_s=log.tokens_seen / elapsed if elapsed > 0 else 0.0, out_dir=out_dir,
                       expert_loads=loads, final_eval=final_eval, dtype=_dtype_name(dtype),
                       flops_per_token=fpt, peak_flops=peak, dataset=dataset, tokenizer=tokenizer)


def _dtype_name(dtype: torch.dtype) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"


@dataclass
class StepStats:
    """What one optimizer step measured, left on the device (reading it would be a host sync)."""
    losses: torch.Tensor          # (grad_accum, 4): loss, main_loss, mtp_loss, balance_loss per micro-batch
    grad_norm: torch.Tensor       # () before clipping
    loads: list[torch.Tensor]     # (E,) tokens per expert per gate (model.gates() order), summed over micro-batches


def train_step(model: Transformer, opt, batches, tc: TrainConfig, lr: float, device) -> StepStats:
    """One optimizer step: ``grad_accum`` micro-batches forward and backward, clip, AdamW. No host sync."""
    for g in opt.param_groups:
        g["lr"] = lr
    losses, loads = [], None
    dtype = resolve_dtype(tc.dtype, device)
    for i in range(tc.grad_accum):
        x, y = next(batches)
        with distributed.no_sync_unless(model, i == tc.grad_accum - 1):   # DDP: all-reduce on the last one
            with autocast(device, dtype):
                out = model(x, y)
            (out.loss / tc.grad_accum).backward()
        zero = torch.zeros((), device=out.loss.device)
        losses.append(torch.stack([out.loss.detach().float(), out.main_loss.detach().float(),
                                   (out.mtp_loss if out.mtp_loss is not None else zero).detach().float(),
                                   (out.balance_loss if out.balance_loss is not None else zero).detach().float()]))
        loads = out.loads if loads is None else [a + b for a, b in zip(loads, out.loads)]
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return StepStats(torch.stack(losses), grad_norm, loads)


class MetricsLog:
    """Collects the steps' device-side stats and turns them into one metrics row per log interval: the only
    host sync of the loop (as in nanoGPT). Rows go to ``history``, to ``metrics.jsonl`` and to the bar.
    Divergence (a non-finite loss or gradient norm) is detected here, at the step where it happened."""

    def __init__(self, out_dir: Path | None, tc: TrainConfig, tokens_per_step: int, flops_per_token: float = 0.0,
                 peak_flops: float | None = None):
        self.tc, self.out_dir, self.tokens_per_step = tc, out_dir, tokens_per_step
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.file = open(out_dir / "metrics.jsonl", "a") if out_dir else None
        self.pending: list[tuple[int, float, StepStats]] = []     # (step, lr, stats) since the last row
        self.tokens_seen, self.t_last = 0, time.perf_counter()

    def add(self, step: int, lr: float, stats: StepStats) -> None:
        self.pending.append((step, lr, stats))
        self.tokens_seen += self.tokens_per_step

    def check_finite(self) -> list[list[float]]:
        """The pending steps' losses and gradient norms as Python numbers; TrainingDiverged at the first
        non-finite one."""
        vals = torch.cat([torch.cat([s.losses.flatten(), s.grad_norm.reshape(1).float()])
                          for _, _, s in self.pending]).tolist() if self.pending else []
        per = 4 * self.tc.grad_accum + 1
        rows = [vals[i * per:(i + 1) * per] for i in range(len(self.pending))]
        for (step, _, _), r in zip(self.pending, rows):
            for j in range(0, per - 1, 4):
                if not math.isfinite(r[j]):
                    raise TrainingDiverged(_diverged_msg(step, r[j], self.out_dir, self.tc))
            if not math.isfinite(r[-1]):
                raise TrainingDiverged(_diverged_msg(step, float("nan"), self.out_dir, self.tc,
                                                     what="gradient norm"))
        return rows

    def row(self, done: int, balance: dict) -> dict:
        """The metrics row for the steps since the last one (means over steps; the last step's grad norm,
        MaxVio and bias range)."""
        rows = self.check_finite()
        now = time.perf_counter()
        ga, n = self.tc.grad_accum, len(rows)
        acc = [0.0, 0.0, 0.0, 0.0]        # summed in this order, in float64, as the mean of each step's mean
        for r in rows:
            for k in range(ga):
                for j in range(4):
                    acc[j] += r[4 * k + j] / ga
        row = {"step": done, "lr": self.pending[-1][1], "loss": acc[0] / n, "main_loss": acc[1] / n,
               "mtp_loss": acc[2] / n, "balance_loss": acc[3] / n, "grad_norm": rows[-1][-1],
               "maxvio": balance["maxvio"], "bias_min": balance["bias_min"], "bias_max": balance["bias_max"],
               "tokens_per_s": self.tokens_per_step * n / (now - self.t_last), "tokens": done * self.tokens_per_step}
        row["flops_per_s"] = row["tokens_per_s"] * self.flops_per_token        # model FLOPs (dsv3_edu.flops)
        if self.peak_flops:
            row["mfu"] = row["flops_per_s"] / self.peak_flops                  # vs the measured matmul peak
        self.pending = []
        return row

    def write(self, row: dict, history: list[dict], bar) -> None:
        history.append(row)
        if self.file:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        if hasattr(bar, "set_postfix"):
            extra = {"val": f"{row['val_loss']:.3f}"} if "val_loss" in row else {}
            if "val_bpb" in row:
                extra["bpb"] = f"{row['val_bpb']:.3f}"
            if "mfu" in row:
                extra["mfu"] = f"{row['mfu']:.0%}"
            bar.set_postfix(loss=f"{row['main_loss']:.3f}", tok_s=f"{row['tokens_per_s']:,.0f}", **extra)
        self.t_last = time.perf_counter()        # evaluation and writing are not training throughput

    def close(self) -> None:
        if self.file:
            self.file.close()


def _resume_dir(resume: str | Path | None) -> Path | None:
    if resume is None:
        return None
    path = Path(resume) / CKPT if (Path(resume) / CKPT).is_dir() else Path(resume)
    if not (path / "train_state.pt").is_file():
        raise FileNotFoundError(f"cannot resume: no train_state.pt under {resume}")
    return path


def _restore_configs(resume_dir: Path, tc: TrainConfig) -> tuple[TrainConfig, ModelConfig]:
    """The saved run's configs; only ``steps`` and ``out_dir`` come from ``tc`` (a run may be extended or moved)."""
    f = resume_dir / "train_config.json"
    try:
        saved = TrainConfig.from_dict(json.loads(f.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as e:
        raise ValueError(f"cannot resume: {f} is corrupt ({e})") from None
    saved.steps, saved.out_dir = tc.steps, tc.out_dir
    return saved, ModelConfig.load(resume_dir / "config.json")


def restore_checkpoint(resume_dir: Path, model: Transformer, opt, batches, device) -> tuple[int, list[dict]]:
    """Load weights, optimizer, data position and RNG saved by ``save_checkpoint``; returns (step, history).
    A corrupt, truncated or mismatched file fails with one line naming it, before anything is written."""
    load_weights(model, resume_dir / "model.safetensors", device)
    f = resume_dir / "train_state.pt"
    try:
        st = torch.load(f, weights_only=False)
        opt.load_state_dict(st["optimizer"])
        batches.load_state_dict(st["data"])
        torch.set_rng_state(st["torch_rng"])
        return st["step"], st["history"]
    except Exception as e:  # noqa: BLE001 (torch.load / pickle raise many types on a damaged file)
        raise ValueError(f"cannot resume: {f} is corrupt, truncated or from another run "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


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
