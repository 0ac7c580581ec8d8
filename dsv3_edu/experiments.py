"""Ablations at equal compute: train named variants of one TrainConfig over seeds and tabulate the results.

Every variant gets the same steps, batch, sequence length, learning-rate schedule and data order (per seed),
so all of them see the same tokens; only the model changes. A variant is a set of ``ModelConfig`` overrides
(and, rarely, ``TrainConfig`` overrides)::

    from dsv3_edu.experiments import format_table, matched_dense_overrides, run_ablation, summarize
    base = TrainConfig(preset="nano", steps=300, out_dir=None)
    variants = {"MoE": {}, "dense": matched_dense_overrides(base.model_config()), "no MTP": {"n_mtp": 0}}
    rows = run_ablation(base, variants, seeds=(0, 1))
    print(format_table(summarize(rows)))

The loss compared is the *main* next-token validation loss (the MTP loss is a training signal, not the
metric), averaged over the same validation batches for every run.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, fields, replace

from .accounting import format_count, param_counts
from .config import ModelConfig
from .train import TrainConfig, TrainResult, load_data, train


@dataclass
class Variant:
    """What a variant changes: ``model`` = ModelConfig overrides, ``train`` = TrainConfig overrides."""
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)


@dataclass
class RunRow:
    """One (variant, seed) run."""
    variant: str
    seed: int
    final_val_loss: float          # main next-token loss on the fixed validation batches, at the last step
    tokens_per_s: float            # median of the logged training throughputs (evaluation excluded)
    wall_s: float                  # the whole run, evaluation included
    activated_params: int          # per token, main model (accounting.param_counts)
    total_params: int              # main model
    tokens: int                    # tokens seen in training
    history: list[dict]
    result: TrainResult | None = None   # kept only with ``keep_models=True``


_MODEL_FIELDS = {f.name for f in fields(ModelConfig)}
_TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}


def as_variant(spec) -> Variant:
    """A ``Variant``, or a plain dict of ModelConfig overrides."""
    if isinstance(spec, Variant):
        return spec
    if isinstance(spec, dict):
        return Variant(model=dict(spec))
    raise ValueError(f"a variant is a dict of ModelConfig overrides or a Variant, got {type(spec).__name__}")


def variant_train_config(base: TrainConfig, spec, seed: int) -> TrainConfig:
    """``base`` with the variant's overrides (merged over base.model_overrides) and ``seed``; no files written."""
    v = as_variant(spec)
    bad = sorted(set(v.model) - _MODEL_FIELDS)
    if bad:
        raise ValueError(f"unknown ModelConfig field(s) {bad} in a variant")
    bad = sorted(set(v.train) - _TRAIN_FIELDS)
    if bad:
        raise ValueError(f"unknown TrainConfig field(s) {bad} in a variant")
    if {"seed", "model_overrides"} & set(v.train):
        raise ValueError("a variant may not override 'seed' or 'model_overrides' through train=; "
                         "use the seeds argument and model=")
    tc = replace(base, **v.train)
    return replace(tc, model_overrides={**base.model_overrides, **v.model}, seed=seed, out_dir=None, plots=False)


def matched_dense_inter_dim(cfg: ModelConfig) -> int:
    """The dense FFN inner size of an all-dense model (``n_dense_layers = n_layers``) whose activated
    parameters per token equal those of ``cfg`` (an MoE model), as counted by ``accounting.param_counts``.

    The main model's parameter count is linear in ``inter_dim`` once every layer is dense, so two
    accounting calls give the line; the result is the integer whose count is closest to the target.
    """
    if cfg.n_moe_layers == 0:
        raise ValueError("matched_dense_inter_dim needs a config with MoE layers (n_dense_layers < n_layers)")
    target = param_counts(cfg)["activated_params"]
    dense = lambda i: param_counts(cfg.replace(n_dense_layers=cfg.n_layers, inter_dim=i))["total_params"]  # noqa: E731
    p1, p2 = dense(1), dense(2)
    slope = p2 - p1                                          # 3 * dim * n_layers
    exact = 1 + (target - p1) / slope                        # p(i) = p1 + (i - 1) * slope = target
    if exact < 1:
        raise ValueError(f"no positive inter_dim matches {target:,} activated parameters")
    lo = int(exact)
    best = min((lo, lo + 1), key=lambda i: abs(p1 + (i - 1) * slope - target))
    return best


def matched_dense_overrides(cfg: ModelConfig) -> dict:
    """ModelConfig overrides that turn ``cfg`` into the dense model with the same activated parameters."""
    return {"n_dense_layers": cfg.n_layers, "inter_dim": matched_dense_inter_dim(cfg)}


def run_ablation(base: TrainConfig, variants: dict, seeds=(0,), dataset=None, keep_models: bool = False,
                 verbose: bool = True) -> list[RunRow]:
    """Train every variant once per seed; returns one RunRow per run, in order seed-major.

    Runs are interleaved (all variants for seed 0, then seed 1...) so a slow period of a shared machine
    does not land on one variant only. Every config is checked before the first run starts.
    """
    if not variants:
        raise ValueError("run_ablation needs at least one variant")
    seeds = tuple(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty sequence of distinct ints, got {seeds}")
    plans = {name: [variant_train_config(base, spec, s) for s in seeds] for name, spec in variants.items()}
    counts = {}
    for name, tcs in plans.items():
        tcs[0].validate()
        counts[name] = param_counts(tcs[0].model_config())     # ValueError here for a bad model config
    if dataset is None:
        dataset, _ = load_data(base, plans[next(iter(plans))][0].model_config().vocab_size)
    rows = []
    for k, seed in enumerate(seeds):
        for name, tcs in plans.items():
            t0 = time.perf_counter()
            res = train(tcs[k], dataset=dataset, progress=False)
            wall = time.perf_counter() - t0
            tps = [r["tokens_per_s"] for r in res.history]
            row = RunRow(variant=name, seed=seed, final_val_loss=res.final_val_loss,
                         tokens_per_s=statistics.median(tps) if tps else res.tokens_per_s, wall_s=wall,
                         activated_params=counts[name]["activated_params"],
                         total_params=counts[name]["total_params"],
                         tokens=res.history[-1]["tokens"] if res.history else 0,
                         history=res.history, result=res if keep_models else None)
            rows.append(row)
            if verbose:
                print(f"  {name:<24} seed {seed}: val {row.final_val_loss:.4f}  "
                      f"{row.tokens_per_s:>8,.0f} tok/s  {wall:5.1f} s")
    return rows


def summarize(rows: list[RunRow], reference: str | None = None) -> list[dict]:
    """One dict per variant (first-seen order): mean and spread of the validation loss over seeds, mean
    tokens/s, params, the difference of the mean loss to ``reference`` (default: the first variant), and
    ``paired_deltas``: {seed: this variant's loss - the reference's loss at the same seed}."""
    if not rows:
        raise ValueError("summarize needs at least one row")
    names = list(dict.fromkeys(r.variant for r in rows))
    reference = names[0] if reference is None else reference
    if reference not in names:
        raise ValueError(f"reference variant {reference!r} not among {names}")
    out = []
    for name in names:
        rs = [r for r in rows if r.variant == name]
        vals = [r.final_val_loss for r in rs]
        out.append({"variant": name, "seeds": len(rs), "val_loss": statistics.fmean(vals),
                    "val_spread": (max(vals) - min(vals)) / 2 if len(vals) > 1 else None,
                    "val_losses": vals, "tokens_per_s": statistics.fmean(r.tokens_per_s for r in rs),
                    "activated_params": rs[0].activated_params, "total_params": rs[0].total_params,
                    "tokens": rs[0].tokens})
    ref = next(s["val_loss"] for s in out if s["variant"] == reference)
    ref_by_seed = {r.seed: r.final_val_loss for r in rows if r.variant == reference}
    for s in out:
        s["delta_vs_reference"] = s["val_loss"] - ref
        # paired: same seed = same data order (and the same initial weights where the shapes agree)
        s["paired_deltas"] = {r.seed: r.final_val_loss - ref_by_seed[r.seed]
                              for r in rows if r.variant == s["variant"] and r.seed in ref_by_seed}
    return out


def format_table(summary: list[dict]) -> str:
    """A plain-text table of ``summarize`` output; the spread is half the max-min range over seeds."""
    w = max(7, *(len(s["variant"]) for s in summary))
    head = (f"{'variant':<{w}}  {'seeds':>5}  {'val loss':>16}  {'vs first':>8}  {'tok/s':>7}  "
            f"{'activated':>9}  {'total':>9}")
    lines = [head, "-" * len(head)]
    for s in summary:
        spread = f" ± {s['val_spread']:.3f}" if s["val_spread"] is not None else ""
        lines.append(f"{s['variant']:<{w}}  {s['seeds']:>5}  {s['val_loss']:>8.4f}{spread:<8}  "
                     f"{s['delta_vs_reference']:>+8.4f}  {s['tokens_per_s']:>7,.0f}  "
                     f"{format_count(s['activated_params']):>9}  {format_count(s['total_params']):>9}")
    return "\n".join(lines)


def mean_history(histories: list[list[dict]]) -> list[dict]:
    """Average the logged rows of several seeds of one run, row by row (up to the shortest history).

    ``step`` and ``tokens`` come from the first seed; every other number (and every list of numbers, e.g. the
    per-gate ``maxvio``, element by element) present in all seeds' row is averaged; ``bias_spread`` =
    bias_max - bias_min is added where the rows have the bias range. Feeds ``viz.training`` and ``viz.balance``.
    """
    if not histories:
        raise ValueError("mean_history needs at least one history")
    rows = []
    for group in zip(*histories):                       # one row of every seed
        m = {k: group[0][k] for k in ("step", "tokens") if k in group[0]}
        if all("bias_max" in r and "bias_min" in r for r in group):
            m["bias_spread"] = statistics.fmean(r["bias_max"] - r["bias_min"] for r in group)
        for k, v in group[0].items():
            if k in m or not all(k in r for r in group):
                continue
            if isinstance(v, list):
                m[k] = [statistics.fmean(r[k][i] for r in group) for i in range(len(v))]
            elif isinstance(v, (int, float)):
                m[k] = statistics.fmean(r[k] for r in group)
        rows.append(m)
    return rows


def mean_histories(rows: list[RunRow]) -> dict[str, list[dict]]:
    """Per variant, ``mean_history`` of its seeds' runs, in the format of
    ``dsv3_edu.viz.training.plot_loss_curves(runs=...)``."""
    names = dict.fromkeys(r.variant for r in rows)
    return {name: mean_history([r.history for r in rows if r.variant == name]) for name in names}
