"""Ablations at equal compute: train named variants of one TrainConfig over seeds and tabulate the results.

Every variant gets the same steps, batch, sequence length, learning-rate schedule and data order (per seed),
so all of them see the same tokens; only the model (or, for e.g. the compute dtype, the training run) changes.
A variant is a set of ``ModelConfig`` overrides (and, rarely, ``TrainConfig`` overrides)::

    from dsv3_edu.experiments import format_summary, matched_dense_overrides, run_ablation, summarize
    base = TrainConfig(preset="nano", steps=300, out_dir=None)
    variants = {"MoE": {}, "dense": matched_dense_overrides(base.model_config()), "no MTP": {"n_mtp": 0}}
    rows = run_ablation(base, variants, seeds=(0, 1))
    print(format_summary(summarize(rows)))

The loss compared is the *main* next-token validation loss (the MTP loss is a training signal, not the
metric), averaged over the same validation batches for every run.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field, fields, replace

from .accounting import format_count, param_counts
from .config import ModelConfig, parse_sets
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
    dtype: str | None = None            # what the run computed in (TrainResult.dtype: "fp32", or "bf16" autocast)


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
                 verbose: bool = True, progress: bool = False) -> list[RunRow]:
    """Train every variant once per seed; returns one RunRow per run, in order seed-major.

    Runs are interleaved (all variants for seed 0, then seed 1...) so a slow period of a shared machine
    does not land on one variant only. Every config is checked before the first run starts.
    ``progress``: a tqdm progress bar over the steps of each run (one bar per run).
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
            res = train(tcs[k], dataset=dataset, progress=progress)
            wall = time.perf_counter() - t0
            tps = [r["tokens_per_s"] for r in res.history]
            row = RunRow(variant=name, seed=seed, final_val_loss=res.final_val_loss,
                         tokens_per_s=statistics.median(tps) if tps else res.tokens_per_s, wall_s=wall,
                         activated_params=counts[name]["activated_params"],
                         total_params=counts[name]["total_params"],
                         tokens=res.history[-1]["tokens"] if res.history else 0,
                         history=res.history, result=res if keep_models else None, dtype=res.dtype)
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


def format_summary(summary: list[dict]) -> str:
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


# ----------------------------------------------------------------------------- reference ablations
# ``python -m dsv3_edu.experiments ablation --budget 200 --seeds 0 1 2 3 --out results/ablations.json`` trains,
# for each comparison, a base variant A (the preset as is: MoE, aux-loss-free, MTP D=1, FP32) and one changed
# variant B for the same budget, paired by seed (same data order; the same initial weights where the variant
# allows: aux loss, FP8 and bf16, not MTP off nor dense),
# and writes per-seed curves, final metrics and a 95% confidence interval of the paired difference B - A.

ABLATION_SCHEMA = "dsv3_edu.ablations/1"

# name: (question, label of A, label of B, what B changes, what a positive difference B - A means).
# What B changes: a dict of ModelConfig overrides, a function of the base ModelConfig returning one, or a
# Variant, whose train= overrides change the training run instead of the model (e.g. the compute dtype).
COMPARISONS = {
    "dense_vs_moe": ("dense vs MoE at equal activated parameters", "MoE", "dense (same activated params)",
                     matched_dense_overrides, "the MoE model is better"),
    "mtp": ("MTP on vs off (main next-token loss)", "MTP on (D=1)", "MTP off", {"n_mtp": 0},
            "training with MTP improves the main next-token loss"),
    "balance": ("aux-loss-free balancing vs an auxiliary loss", "aux-loss-free", "aux loss",
                {"balance": "aux_loss"}, "the aux-loss-free model is better"),
    "fp8": ("FP8-simulated vs FP32 GEMMs", "FP32", "FP8-simulated", {"fp8": True}, "FP8 costs loss"),
    "bf16": ("bf16 autocast (fp32 master weights) vs fp32", "FP32", "bf16 autocast",
             Variant(train={"dtype": "bf16"}), "bf16 costs loss"),
}

# What ``ablation`` runs without --only. bf16 is opt-in: on a CPU without AVX512-BF16/AMX its matmuls are
# emulated, about 9x slower than FP32 on the course's 2-core CPU (docs/ablations.md), and it would dominate the
# wall time of the default command.
DEFAULT_COMPARISONS = ("dense_vs_moe", "mtp", "balance", "fp8")

# Comparisons whose claim is about the whole training curve, not only the final loss: ``report`` adds the
# largest gap between the seed-mean curves against the seed spread (``trajectory_gap``).
TRAJECTORY_COMPARISONS = ("bf16",)

# t_{0.975, dof} is computed exactly (Abramowitz & Stegun 26.7.3-4); no scipy needed.


def student_t_two_sided(t: float, dof: int) -> float:
    """P(|T| < t) for Student's t with an integer number of degrees of freedom (closed form, A&S 26.7.3-4)."""
    if dof < 1 or int(dof) != dof:
        raise ValueError(f"degrees of freedom must be a positive integer, got {dof}")
    theta = math.atan(abs(t) / math.sqrt(dof))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if dof % 2 == 1:
        total, term = 0.0, 1.0
        if dof > 1:
            total = term
            for k in range(1, (dof - 3) // 2 + 1):          # 1 + 2/3 c^2 + 2*4/(3*5) c^4 + ...
                term *= (2 * k) / (2 * k + 1) * c2
                total += term
            return 2 / math.pi * (theta + s * math.cos(theta) * total)
        return 2 / math.pi * theta
    total, term = 1.0, 1.0
    for k in range(1, (dof - 2) // 2 + 1):                  # 1 + 1/2 c^2 + 1*3/(2*4) c^4 + ...
        term *= (2 * k - 1) / (2 * k) * c2
        total += term
    return s * total


def t_quantile_975(dof: int) -> float:
    """t_{0.975, dof}: the half-width factor of a two-sided 95% interval (bisection on the exact CDF)."""
    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if student_t_two_sided(mid, dof) < 0.95 else (lo, mid)
    return (lo + hi) / 2


def paired_interval(diffs) -> dict:
    """Mean, sample sd (n-1), n, t_{0.975,n-1} and the 95% Student-t interval ``ci95: [low, high]`` of paired
    differences; ``excludes_zero`` says whether the interval lies entirely on one side of 0. Needs n >= 2."""
    d = [float(x) for x in diffs]
    if len(d) < 2:
        raise ValueError(f"a confidence interval needs at least 2 paired differences, got {len(d)}")
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    t = t_quantile_975(len(d) - 1)
    half = t * sd / math.sqrt(len(d))
    low, high = mean - half, mean + half
    return {"n": len(d), "mean": mean, "sd": sd, "t": t, "ci95": [low, high],
            "excludes_zero": bool(low > 0 or high < 0)}


def parse_budget(text: str, tokens_per_step: int) -> int:
    """Optimizer steps from ``--budget``: ``300`` = 300 steps, ``200000tok`` / ``200ktok`` / ``1.5Mtok`` =
    enough steps for that many training tokens (rounded up)."""
    s = str(text).strip()
    try:
        if s.lower().endswith("tok"):
            num = s[:-3]
            mult = {"k": 1e3, "m": 1e6}.get(num[-1:].lower(), 1)
            tokens = float(num[:-1] if mult != 1 else num) * mult
            steps = math.ceil(tokens / tokens_per_step)
        else:
            steps = int(s)
    except ValueError:
        raise ValueError(f"--budget must be steps (e.g. 300) or tokens (e.g. 200ktok), got {text!r}") from None
    if steps < 1:
        raise ValueError(f"--budget must give at least 1 step, got {text!r}")
    return steps


def machine_info() -> dict:
    """CPU model, logical cores, torch version, platform, OMP_NUM_THREADS and torch's thread count."""
    import os
    import platform

    import torch
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _round(x, digits: int = 6):
    return float(f"{x:.{digits}g}") if isinstance(x, float) else x


def _gate_mean(v):
    return statistics.fmean(v) if isinstance(v, list) and v else (v if isinstance(v, (int, float)) else None)


def run_record(row: RunRow) -> dict:
    """A RunRow as small JSON: the final metrics and the logged curve (a few dozen points)."""
    h = row.history
    final = {"val_loss": row.final_val_loss}
    evals = [r for r in h if "val_loss" in r]
    if evals:
        final.update({k: evals[-1][k] for k in ("val_bpb", "mtp_acceptance") if k in evals[-1]})
    vio = [_gate_mean(r.get("maxvio")) for r in h[len(h) - max(1, len(h) // 4):]]
    vio = [v for v in vio if v is not None]
    if vio:                                   # MaxVio_batch, mean over MoE layers, over the last quarter of rows
        final["maxvio"] = statistics.fmean(vio)
    curve = []
    for r in h:
        pt = {k: r[k] for k in ("step", "tokens", "main_loss", "val_loss", "val_bpb", "balance_loss") if k in r}
        mv = _gate_mean(r.get("maxvio"))
        if mv is not None and r.get("maxvio"):
            pt["maxvio"] = mv
        curve.append({k: _round(v) for k, v in pt.items()})
    rec = {"variant": row.variant, "seed": row.seed, "final": {k: _round(v) for k, v in final.items()},
           "tokens": row.tokens, "wall_s": round(row.wall_s, 1), "tokens_per_s": round(row.tokens_per_s, 1)}
    if row.dtype is not None:     # what the run really computed in ("auto" resolves per machine), not what was asked
        rec["dtype"] = row.dtype
    rec["curve"] = curve
    return rec


def comparison_stats(comp: dict) -> dict:
    """Paired differences B - A per metric over the seeds where both variants finished, with ``paired_interval``
    where there are >= 2 pairs; metrics: val_loss, val_bpb, and maxvio where the runs have it."""
    a, b = comp["a"], comp["b"]
    by = {(r["variant"], r["seed"]): r["final"] for r in comp["runs"]}
    seeds = [s for s in comp["seeds"] if (a, s) in by and (b, s) in by]
    out = {}
    for metric in ("val_loss", "val_bpb", "maxvio"):
        pairs = {s: by[(b, s)][metric] - by[(a, s)][metric] for s in seeds
                 if metric in by[(a, s)] and metric in by[(b, s)]}
        if not pairs:
            continue
        entry = {"diffs": {str(s): _round(d) for s, d in pairs.items()},
                 "a_mean": _round(statistics.fmean(by[(a, s)][metric] for s in pairs)),
                 "b_mean": _round(statistics.fmean(by[(b, s)][metric] for s in pairs))}
        if len(pairs) >= 2:
            entry.update({k: (_round(v) if isinstance(v, float) else v)
                          for k, v in paired_interval(pairs.values()).items()})
            entry["ci95"] = [_round(x) for x in entry["ci95"]]
        out[metric] = entry
    return out


def trajectory_gap(comp: dict, key: str = "main_loss") -> dict:
    """How far apart the two variants' curves of ``key`` are, against the seed noise, at every logged point.

    Only seeds where both A and B finished count, and only points (steps) that every one of those runs logged.
    Per point: ``a_mean``, ``b_mean`` (means over seeds), ``gap`` = |b_mean - a_mean|, ``a_sd`` = the sample
    standard deviation (n - 1) of A over seeds (how much a curve moves with the seed alone), and ``paired_sd``
    = that of the per-seed differences B - A. Returns {"key", "seeds", "points": [...], "max_gap": the point
    with the largest gap, "max_ratio": the point with the largest gap / a_sd}. ValueError with < 2 seeds.

    The claim "B follows A's curve within seed noise" reads: max_gap is small against a_sd at the same point.
    The paired sd is usually much smaller than a_sd (same data, same initial weights), so a gap can be well
    within the seed spread and still be a systematic shift; both are kept so a reader can see which it is.
    """
    a, b = comp["a"], comp["b"]
    curves = {(r["variant"], r["seed"]): {p["step"]: p for p in r["curve"] if key in p} for r in comp["runs"]}
    seeds = [s for s in comp["seeds"] if (a, s) in curves and (b, s) in curves]
    if len(seeds) < 2:
        raise ValueError(f"trajectory_gap needs >= 2 seeds where both variants finished, got {len(seeds)}")
    runs = [curves[(v, s)] for s in seeds for v in (a, b)]
    steps = sorted(set.intersection(*(set(c) for c in runs)))
    points = []
    for step in steps:
        av = [curves[(a, s)][step][key] for s in seeds]
        bv = [curves[(b, s)][step][key] for s in seeds]
        am, bm = statistics.fmean(av), statistics.fmean(bv)
        points.append({"step": step, "tokens": curves[(a, seeds[0])][step].get("tokens"), "a_mean": am, "b_mean": bm,
                       "gap": abs(bm - am), "a_sd": statistics.stdev(av),
                       "paired_sd": statistics.stdev(y - x for x, y in zip(av, bv))})
    if not points:
        raise ValueError(f"no step where every run logged {key!r}")
    return {"key": key, "seeds": seeds, "points": points, "max_gap": max(points, key=lambda p: p["gap"]),
            "max_ratio": max(points, key=lambda p: p["gap"] / p["a_sd"] if p["a_sd"] > 0 else math.inf)}


def trajectory_reading(name: str, comp: dict, key: str = "main_loss") -> str:
    """``trajectory_gap`` as one sentence (numbers only, generated from the curves in the results)."""
    t = trajectory_gap(comp, key)
    g, r = t["max_gap"], t["max_ratio"]
    n = len(t["points"])
    within = sum(p["gap"] <= p["a_sd"] for p in t["points"])
    above = sum(p["b_mean"] > p["a_mean"] for p in t["points"])      # a systematic shift shows as one sign
    return (f"{name} trajectory ({key}, {n} logged points, {len(t['seeds'])} seeds): largest "
            f"|mean {comp['b']} - mean {comp['a']}| = {g['gap']:.4f} at step {g['step']}, where the seed spread "
            f"(sd over seeds of {comp['a']}) is {g['a_sd']:.4f} and the sd of the paired differences "
            f"{g['paired_sd']:.4f}; largest gap / spread = {r['gap'] / r['a_sd']:.2f} (step {r['step']}); "
            f"the gap is within one seed sd at {within} of {n} points; mean {comp['b']} is above mean "
            f"{comp['a']} at {above} of {n}.")


def write_results(path, comparisons: dict, meta: dict) -> dict:
    """Merge ``comparisons`` into the JSON at ``path`` (other comparisons already there are kept, so separate
    invocations may each add theirs) under a file lock, and write it atomically. Returns the written data."""
    import fcntl
    import json
    import os
    from pathlib import Path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import hashlib
    import tempfile
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]      # the lock lives outside the repository
    with open(Path(tempfile.gettempdir()) / f"dsv3_edu_ablations_{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.is_file() else {}
        if data.get("schema") not in (None, ABLATION_SCHEMA):
            raise ValueError(f"{path} is not an ablation results file (schema {data.get('schema')!r})")
        data["schema"] = ABLATION_SCHEMA
        data.setdefault("comparisons", {}).update(comparisons)
        data["commands"] = list(dict.fromkeys([*data.get("commands", []), meta["command"]]))
        data.update({k: v for k, v in meta.items() if k != "command"})
        data["command"] = meta["command"]                       # the latest invocation
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
    return data


def run_reference_ablation(base: TrainConfig, seeds=(0, 1, 2, 3), only=None, out=None, command: str = "",
                           dataset=None, progress: bool = True, tag: str | None = None) -> dict:
    """Train A and B of each comparison in ``only`` (default: DEFAULT_COMPARISONS) for ``base.steps``, once per
    seed, seed-major; the A runs are shared between comparisons (same config, same seed = the same run).
    A is ``base`` itself, so a comparison that changes the dtype needs a base whose dtype differs from B's
    (the command line pins ``dtype="fp32"``); ValueError where B would compute exactly what A computes.
    After every run the JSON at ``out`` (if given) is rewritten, so an interrupted run leaves its finished
    pairs with ``complete: false``. ``tag`` stores the comparisons as ``name@tag`` (e.g. a longer budget next
    to the default one). Returns {comparison key: its record}."""
    import datetime
    import json

    only = list(DEFAULT_COMPARISONS) if only is None else list(only)
    bad = [c for c in only if c not in COMPARISONS]
    if bad or not only:
        raise ValueError(f"unknown comparison(s) {bad}; choose from {', '.join(COMPARISONS)}")
    seeds = tuple(int(s) for s in seeds)
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"a paired interval needs >= 2 distinct seeds, got {seeds}")
    base.validate()
    cfg = base.model_config()
    variants: dict[str, Variant] = {}                        # label -> what it changes in base
    comps = {}
    for name in only:
        question, a, b, spec, meaning = COMPARISONS[name]
        v = as_variant(spec(cfg) if callable(spec) else spec)
        variants.setdefault(a, Variant())
        variants[b] = v
        _check_differs(name, variant_train_config(base, variants[a], 0), variant_train_config(base, v, 0))
        key = name if tag is None else f"{name}@{tag}"
        comps[key] = {
                       "name": name, "tag": tag, "question": question, "a": a, "b": b,
                       "difference": f"{b} - {a} (per seed)",
                       "positive_means": meaning, "metric": "val_loss",
                       "overrides": {a: {}, b: dict(v.model)}, "seeds": list(seeds), "runs": [], "complete": False}
        if v.train:      # only comparisons that change the run carry this key: the others keep their format
            comps[key]["train_overrides"] = {a: {}, b: dict(v.train)}
    # one training run per distinct set of overrides and seed; labels that share overrides share the run
    labels_of: dict[str, list[str]] = {}
    for label, v in variants.items():
        labels_of.setdefault(json.dumps([v.model, v.train], sort_keys=True), []).append(label)
    plans = {key: [variant_train_config(base, variants[labels[0]], s) for s in seeds]
             for key, labels in labels_of.items()}
    counts = {}
    for key, tcs in plans.items():
        tcs[0].validate()
        for label in labels_of[key]:
            counts[label] = param_counts(tcs[0].model_config())
    tokens_per_step = base.batch_size * base.seq_len * base.grad_accum
    budget = {"steps": base.steps, "tokens": base.steps * tokens_per_step, "batch_size": base.batch_size,
              "seq_len": base.seq_len, "grad_accum": base.grad_accum, "lr": base.lr,
              "warmup_steps": base.warmup_steps, "eval_every": base.eval_every, "eval_batches": base.eval_batches,
              "preset": base.preset, "model_overrides": base.model_overrides, "dtype": base.dtype}
    machine = machine_info()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for c in comps.values():
        c.update({"budget": budget, "params": {lab: {"activated": counts[lab]["activated_params"],
                                                     "total": counts[lab]["total_params"]}
                                               for lab in (c["a"], c["b"])},
                  "command": command, "machine": machine, "started": started})
    if dataset is None:
        dataset, _ = load_data(base, cfg.vocab_size)
    t_start = time.perf_counter()
    from tqdm.auto import tqdm
    done: dict[tuple[str, int], dict] = {}
    bar = tqdm(total=len(seeds) * len(plans), desc="ablation runs", unit="run", disable=not progress)
    for k, seed in enumerate(seeds):
        for key, tcs in plans.items():
            bar.set_postfix_str(f"{' = '.join(labels_of[key])}, seed {seed}")
            t0 = time.perf_counter()
            res = train(tcs[k], dataset=dataset, progress=False)
            tps = [r["tokens_per_s"] for r in res.history]
            for label in labels_of[key]:
                row = RunRow(variant=label, seed=seed, final_val_loss=res.final_val_loss,
                             tokens_per_s=statistics.median(tps) if tps else res.tokens_per_s,
                             wall_s=time.perf_counter() - t0, activated_params=counts[label]["activated_params"],
                             total_params=counts[label]["total_params"],
                             tokens=res.history[-1]["tokens"] if res.history else 0, history=res.history,
                             dtype=res.dtype)
                done[(label, seed)] = run_record(row)
            bar.update(1)
            _refresh(comps, done, t_start, seeds, final=False)
            if out is not None:
                write_results(out, comps, {"command": command, "machine": machine})
    bar.close()
    _refresh(comps, done, t_start, seeds, final=True)
    if out is not None:
        write_results(out, comps, {"command": command, "machine": machine})
    return comps


def _check_differs(name: str, a: TrainConfig, b: TrainConfig) -> None:
    """ValueError where comparison ``name``'s B would train exactly what A trains. The dtype is compared as it
    resolves on this machine: with ``dtype="auto"`` on bf16 hardware A is bf16 too, and "bf16 vs bf16" would
    read as a (null) result about bf16."""
    from .runtime import get_device, resolve_dtype

    def what_runs(tc):
        return replace(tc, dtype=str(resolve_dtype(tc.dtype, get_device(tc.device))))
    if what_runs(a) == what_runs(b):
        raise ValueError(f"comparison {name!r}: B trains the same run as A with this base config "
                         f"(dtype {a.dtype!r}); for 'bf16' set the base dtype to 'fp32'")


def merge_results(files: list[dict]) -> dict:
    """Comparisons of several results files (``load_ablations`` dicts) in one: a comparison present in several
    files (the same key, A, B and budget; different seeds, e.g. from parallel invocations) gets the union of
    their runs and recomputed paired statistics; ``commands`` lists each part's command(s), ``wall_s`` is the
    longest part's (they ran in parallel). A comparison found in one file only is passed through unchanged, so
    ``merge results/ablations.json part.json`` adds the part's comparisons and leaves the others as they were.
    ValueError where the budgets or variants differ."""
    import copy
    out: dict[str, dict] = {}
    joined = set()                                 # keys found in more than one file: recomputed below
    for data in files:
        for key, c in data["comparisons"].items():
            if key not in out:
                out[key] = copy.deepcopy(c)
                continue
            m = out[key]
            if key not in joined:                  # a comparison merged before keeps the list of its parts
                m["commands"] = list(m.get("commands", [m["command"]]))
                joined.add(key)
            if (m["a"], m["b"], m["budget"]) != (c["a"], c["b"], c["budget"]):
                raise ValueError(f"cannot merge {key!r}: the files differ in variants or budget")
            have = {(r["variant"], r["seed"]) for r in m["runs"]}
            m["runs"] += [r for r in c["runs"] if (r["variant"], r["seed"]) not in have]
            m["seeds"] = sorted(set(m["seeds"]) | set(c["seeds"]))
            # dict.fromkeys: re-running a merge with a part already in the file does not list its command twice
            m["commands"] = list(dict.fromkeys(m["commands"] + c.get("commands", [c["command"]])))
            m["wall_s"] = max(m["wall_s"], c["wall_s"])
            m["complete"] = m["complete"] and c["complete"]
    for m in (out[k] for k in joined):
        m["runs"].sort(key=lambda r: (r["seed"], r["variant"] != m["a"]))
        m["paired"] = comparison_stats(m)
        n_pairs = len(m["paired"].get("val_loss", {}).get("diffs", {}))
        m["complete"] = m["complete"] and n_pairs == len(m["seeds"])
        m["status"] = "complete" if m["complete"] else f"partial: {n_pairs} of {len(m['seeds'])} seed pairs finished"
        m["command"] = " ; ".join(m["commands"])
    return out


def _refresh(comps: dict, done: dict, t_start: float, seeds, final: bool) -> None:
    import datetime
    for c in comps.values():
        c["runs"] = [done[(lab, s)] for s in seeds for lab in (c["a"], c["b"]) if (lab, s) in done]
        c["paired"] = comparison_stats(c)
        n_pairs = sum((c["a"], s) in done and (c["b"], s) in done for s in seeds)
        c["complete"] = final and n_pairs == len(seeds)
        c["status"] = ("complete" if c["complete"] else
                       f"partial: {n_pairs} of {len(seeds)} seed pairs finished")
        c["wall_s"] = round(time.perf_counter() - t_start, 1)
        c["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def main(argv=None) -> None:
    """``python -m dsv3_edu.experiments ablation --budget 200 --seeds 0 1 2 3 --out results/ablations.json``"""
    import argparse
    import shlex
    import sys

    import torch
    p = argparse.ArgumentParser(prog="python -m dsv3_edu.experiments",
                                description="Reference ablations with paired 95%% confidence intervals.")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ablation", help="train each comparison's two variants for the same budget over seeds")
    a.add_argument("--budget", required=True, help="optimizer steps (300) or training tokens (200ktok, 1.5Mtok)")
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    a.add_argument("--preset", default="nano")
    a.add_argument("--set", nargs="*", metavar="FIELD=VALUE", help="model config overrides of the base (A) model, "
                   "e.g. vocab_size=4096")
    a.add_argument("--only", default=",".join(DEFAULT_COMPARISONS),
                   help=f"comma-separated subset of {','.join(COMPARISONS)} (default: all but bf16, which is "
                        "slow on CPUs without native bf16)")
    a.add_argument("--batch-size", type=int, default=8)
    a.add_argument("--seq-len", type=int, default=64)
    a.add_argument("--lr", type=float, default=2e-3)
    a.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 10%% of the budget)")
    a.add_argument("--evals", type=int, default=4, help="validation evaluations per run (the last at the end)")
    a.add_argument("--points", type=int, default=30, help="logged curve points per run")
    a.add_argument("--eval-batches", type=int, default=16)
    a.add_argument("--threads", type=int, default=1, help="torch threads per run")
    a.add_argument("--out", default="results/ablations.json")
    a.add_argument("--tag", default=None, help="store the comparisons as NAME@TAG (e.g. a longer budget)")
    mg = sub.add_parser("merge", help="merge results files that ran the same comparisons on different seeds")
    mg.add_argument("paths", nargs="+")
    mg.add_argument("--out", default="results/ablations.json")
    r = sub.add_parser("report", help="print the Markdown table and the readings of an ablation results file")
    r.add_argument("path", nargs="?", default=None, help="default: results/ablations.json")
    args = p.parse_args(argv)
    if args.cmd == "merge":
        comps = merge_results([load_ablations(x) for x in args.paths])
        cmd = "python -m dsv3_edu.experiments " + " ".join(shlex.quote(x) for x in
                                                           (argv if argv is not None else sys.argv[1:]))
        write_results(args.out, comps, {"command": cmd, "machine": machine_info()})
        print(format_ablation_table(comps))
        return
    if args.cmd == "report":
        data = load_ablations(args.path)
        comps = data["comparisons"]
        print(format_ablation_table(comps) + "\n")
        for name, c in comps.items():
            print(f"- {ablation_reading(name, c)}")
            if "maxvio" in c.get("paired", {}) and name == "balance":
                print(f"- {ablation_reading(name, c, 'maxvio')}")
            pairs = c.get("paired", {}).get("val_loss", {}).get("diffs", {})
            if c.get("name", name.split("@")[0]) in TRAJECTORY_COMPARISONS and len(pairs) >= 2:
                print(f"- {trajectory_reading(name, c)}")
        return
    torch.set_num_threads(args.threads)
    steps = parse_budget(args.budget, args.batch_size * args.seq_len)
    log_every = max(1, steps // args.points)
    eval_every = log_every * max(1, (steps // log_every) // max(1, args.evals))
    base = TrainConfig(preset=args.preset, model_overrides=parse_sets(args.set), steps=steps,
                       batch_size=args.batch_size, seq_len=args.seq_len,
                       lr=args.lr, warmup_steps=args.warmup if args.warmup is not None else max(1, steps // 10),
                       eval_every=eval_every, eval_batches=args.eval_batches, log_every=log_every,
                       dtype="fp32", mfu=False, out_dir=None, plots=False)
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    command = "python -m dsv3_edu.experiments " + " ".join(shlex.quote(x) for x in
                                                           (argv if argv is not None else sys.argv[1:]))
    comps = run_reference_ablation(base, seeds=args.seeds, only=only, out=args.out, command=command, tag=args.tag)
    print(format_ablation_table(comps))


def format_ablation_table(comparisons: dict, metric: str = "val_loss") -> str:
    """A Markdown table, one line per comparison: the mean of A and B, the paired mean difference B - A, its
    95% interval and whether it excludes zero (all computed from the results; no number typed by hand)."""
    lines = ["| comparison | A | B | seeds | steps (tokens) | A mean | B mean | mean B - A | 95% CI | excludes 0 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in comparisons.items():
        p = c.get("paired", {}).get(metric)
        if not p:
            continue
        ci = p.get("ci95")
        ci_s = f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "n/a (< 2 pairs)"
        ex = ("yes" if p["excludes_zero"] else "no") if ci else "n/a"
        mean = statistics.fmean(float(v) for v in p["diffs"].values())
        b = c["budget"]
        lines.append(f"| {name} | {c['a']} | {c['b']} | {len(p['diffs'])} | {b['steps']} ({b['tokens']:,}) | "
                     f"{p['a_mean']:.4f} | {p['b_mean']:.4f} | {mean:+.4f} | {ci_s} | {ex} |")
    return "\n".join(lines)


# What the sources say, per comparison: (expected sign of B - A in val loss: +1, -1, 0 for "within the report's
# relative bound", None for "no sign claim for this setting"; the claim and where it comes from).
REPORT_EXPECTATION = {
    "dense_vs_moe": (+1, "the V3 report has no dense ablation; DeepSeekMoE (Dai et al., 2024) finds the MoE "
                         "model better than a dense one at equal activated parameters (dense - MoE > 0)"),
    "mtp": (+1, "the report's MTP ablation (15.7B on 1.33T tokens, 228.7B on 540B tokens, Table 4) finds MTP "
                "improves most benchmarks (MTP off - on > 0)"),
    "balance": (None, "this comparison's aux loss is batch-wise (balance.batch_aux_loss); the report finds "
                      "validation loss sequence-wise aux loss > aux-loss-free ~= batch-wise aux loss, and "
                      "aux-loss-free better than a purely aux-loss-based baseline on most benchmarks"),
    "fp8": (0, "the report's FP8 recipe keeps the relative loss error vs BF16 below 0.25% "
               "(validated at about 16B and 230B parameters for about 1T tokens)"),
    "bf16": (None, "the V3 report has no FP32 baseline (its reference is BF16); Kalamkar et al. (2019) find "
                   "bf16 mixed-precision training matches FP32 without changing hyperparameters"),
}


def results_path(name: str = "ablations.json"):
    """``results/NAME`` of the repository this package lives in (the committed reference results)."""
    from pathlib import Path
    return Path(__file__).resolve().parents[1] / "results" / name


def load_ablations(path=None) -> dict:
    """The committed reference ablations (``results/ablations.json`` by default), as written by
    ``python -m dsv3_edu.experiments ablation``; FileNotFoundError with the command to make them if missing."""
    return _load_result(path, "ablations.json",
                        "python -m dsv3_edu.experiments ablation --budget 200 --out results/ablations.json",
                        ABLATION_SCHEMA, "an ablation results file")


def ablation_reading(name: str, comp: dict, metric: str = "val_loss") -> str:
    """An honest sentence about one comparison, generated from its numbers: the paired mean difference B - A,
    its 95% interval, whether the interval excludes zero, and, where it does, the sign and size against the
    report (REPORT_EXPECTATION). Nothing in it is typed by hand."""
    p = comp.get("paired", {}).get(metric)
    b = comp["budget"]
    head = (f"{name} ({comp['b']} - {comp['a']}, {metric}, {b['steps']} steps = {b['tokens']:,} tokens per run"
            f"{'' if comp.get('complete') else ', ' + comp.get('status', 'partial')})")
    if not p or "ci95" not in p:
        return f"{head}: fewer than 2 finished seed pairs, no interval."
    lo, hi = p["ci95"]
    unit = "bits/byte" if metric == "val_bpb" else ("" if metric == "maxvio" else "nats")
    text = (f"{head}: mean difference {p['mean']:+.4f}{' ' + unit if unit else ''} over {p['n']} seeds, "
            f"95% CI [{lo:+.4f}, {hi:+.4f}]")
    if not p["excludes_zero"]:
        return text + " contains zero: at this budget the two variants are not separated."
    sign = 1 if p["mean"] > 0 else -1
    text += f" excludes zero: {comp['b'] if sign < 0 else comp['a']} is better here"
    if metric == "maxvio":
        return text.replace("is better here", "balances better here (lower MaxVio)") + "."
    rel = p["mean"] / p["a_mean"] if p.get("a_mean") else float("nan")
    text += f" (relative difference {rel:+.2%})."
    base_name = comp.get("name") or name.split("@")[0]
    if base_name in REPORT_EXPECTATION:
        expected, claim = REPORT_EXPECTATION[base_name]
        if expected is None:                  # the sources make no sign claim for this exact setting
            text += f" Compare with the sources: {claim}."
            return text
        if expected == 0:
            verdict = ("within" if abs(rel) < 0.0025 else "larger than") + " the report's 0.25% bound"
        else:
            verdict = "the same sign as" if sign == expected else "the opposite sign to"
        text += f" That is {verdict} the sources: {claim}."
    return text


if __name__ == "__main__":
    main()


def load_run_record(path=None) -> dict:
    """A run record written by ``python -m dsv3_edu train --record FILE``; by default ``results/default_run.json``,
    the README's first command as measured (made by ``python -m dsv3_edu train --record results/default_run.json``)."""
    return _load_result(path, "default_run.json", "python -m dsv3_edu train --record results/default_run.json",
                        "dsv3_edu.run/1", "a run record")


def load_sampling_sweep(path=None) -> dict:
    """The Python-likeness of the default checkpoint's samples by temperature (``results/sweep_sampling.json``,
    written by ``benchmarks/sweep_sampling.py``)."""
    return _load_result(path, "sweep_sampling.json", "python benchmarks/sweep_sampling.py --ckpt runs/default")


def _load_result(path, name: str, command: str, schema: str | None = None, what: str = "") -> dict:
    """A committed results file (``results/NAME`` by default): FileNotFoundError naming the command that makes it
    if missing, ValueError if its schema is not ``schema``."""
    import json
    from pathlib import Path
    path = Path(path) if path is not None else results_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"no {name} at {path}; make it with {command}")
    data = json.loads(path.read_text())
    if schema is not None and data.get("schema") != schema:
        raise ValueError(f"{path} is not {what} (schema {data.get('schema')!r})")
    return data


def format_run_record(rec: dict) -> str:
    """The record's figures as the trainer printed them, plus what made them: command, machine, wall time."""
    from .evaluate import format_bits_per_byte, format_python_likeness
    ev, m, tc = rec["final_eval"], rec["machine"], rec["train_config"]
    tokens = rec["curve"][-1]["tokens"] if rec["curve"] else 0
    lines = [f"{rec['command']}  ({rec['wall_s'] / 60:.1f} min on {m['cpu']}, {m['cores']} cores, torch {m['torch']})",
             f"preset {tc['preset']}, {rec['params'] / 1e6:.2f}M parameters, {tc['steps']} steps x "
             f"{tc['batch_size']} x {tc['seq_len']} = {tokens:,} tokens, {rec['dtype']}",
             f"final validation loss {ev['val_loss']:.4f} nats/token  |  {rec['tokens_per_s']:,.0f} tokens/s"
             + (f" = {rec['mfu']:.0%} MFU" if rec.get("mfu") else "")]
    if "val_bpb" in ev:
        ratio = f" = {ev['val_bpb'] / ev['xz']:.2f}x xz" if ev.get("xz") else ""
        lines.append(format_bits_per_byte(ev["val_bpb"], ev) + ratio)
    if rec.get("python_likeness"):
        lines.append(format_python_likeness(rec["python_likeness"]["samples"], rec["python_likeness"]["heldout"]))
    return "\n".join(lines)
