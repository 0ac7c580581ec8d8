"""Command line: ``python -m dsv3_edu {train,generate,accounting}``."""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import fields
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _train(args) -> int:
    import time

    from .train import TrainConfig, TrainingDiverged, train
    t_start = time.perf_counter()
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if getattr(args, f.name, None) is not None and f.name != "model_overrides"}
    try:
        recipe = {} if args.resume else _announce_recipe(given)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    tc = TrainConfig(**{**recipe, **given})
    try:
        for f in fields(TrainConfig):            # a NaN slips through argparse's float() and most range checks
            v = getattr(args, f.name, None)
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"--{f.name.replace('_', '-')} must be a finite number, got {v}")
        from .config import parse_sets
        tc.model_overrides = parse_sets(args.set)
        if args.resume is not None and not Path(args.resume).exists():
            raise FileNotFoundError(f"--resume {args.resume}: no such run folder")
        if args.resume is not None and (args.set or args.preset):
            raise ValueError("--resume continues a run with the model config saved in it; "
                             "--preset / --set would build another model (start a new run instead)")
        res = train(tc, resume=args.resume)
    except (TrainingDiverged, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") != "0":     # torchrun: rank 0 reports, draws and samples
        return 0
    ev = res.final_eval
    speed = f"{res.tokens_per_s:,.0f} tokens/s"
    if res.mfu is not None:
        speed += (f", {res.tokens_per_s * res.flops_per_token / 1e9:,.1f} GFLOP/s = {res.mfu:.0%} MFU "
                  f"(vs a {res.peak_flops / 1e9:,.1f} GFLOP/s {res.dtype} matmul peak)")
    print(f"\nfinal validation loss {res.final_val_loss:.4f} nats/token  |  {speed}  |  "
          f"{res.model.num_params() / 1e6:.2f}M parameters")
    if "val_bpb" in ev:
        from .evaluate import format_bits_per_byte
        print(format_bits_per_byte(ev["val_bpb"], ev))
    if "mtp_acceptance" in ev:
        print(f"MTP draft acceptance (teacher-forced, validation) {ev['mtp_acceptance']:.1%}")
    likeness = _python_likeness(res) if args.samples else None
    if likeness:
        from .evaluate import format_python_likeness
        print(format_python_likeness(likeness["samples"], likeness["heldout"]))
    if res.out_dir:
        pictures = _save_training_plots(res) if tc.plots else []
        print(f"checkpoint, metrics.jsonl{''.join(', ' + p for p in pictures)} in {res.out_dir}")
    if args.samples:
        _print_samples(res.model, res.tokenizer, args.samples)
    if args.record:
        _write_record(args.record, res, tc, likeness, time.perf_counter() - t_start)
        print(f"run record: {args.record}")
    return 0


def _python_likeness(res) -> dict:
    """Python-likeness of fixed-prompt samples and of held-out code cut the same way (dsv3_edu.evaluate), with
    the tokenizer and validation stream the run trained with."""
    from .evaluate import DEFAULT_PROMPTS, heldout_python_likeness, sample_python_likeness
    model, dataset, tok = res.model, res.dataset, res.tokenizer
    seeds, temperature = (0, 1), 0.8
    samples = sample_python_likeness(model, tok, DEFAULT_PROMPTS, seeds, temperature=temperature)
    samples.update(n_samples=len(DEFAULT_PROMPTS) * len(seeds), temperature=temperature)
    return {"samples": samples, "heldout": heldout_python_likeness(dataset["val"], tok)}


def _write_record(path: str, res, tc, likeness: dict | None, wall_s: float) -> None:
    """The run's figures as small JSON (results/default_run.json is this file for the README's first command):
    command, machine, wall time, configs, final evaluation, speed, Python-likeness and the logged curve."""
    import json
    import shlex
    from dataclasses import asdict

    from .data.corpus import atomic_write_text
    from .experiments import machine_info
    curve = [{k: r[k] for k in ("step", "tokens", "main_loss", "val_loss", "val_bpb", "tokens_per_s") if k in r}
             for r in res.history]
    record = {"schema": "dsv3_edu.run/1", "command": "python -m dsv3_edu " + shlex.join(sys.argv[1:]),
              "machine": machine_info(), "wall_s": round(wall_s, 1), "train_config": asdict(tc),
              "model_config": res.model.cfg.to_dict(), "params": res.model.num_params(),
              "final_eval": res.final_eval, "tokens_per_s": res.tokens_per_s, "dtype": res.dtype,
              "flops_per_token": res.flops_per_token, "peak_flops": res.peak_flops, "mfu": res.mfu,
              "python_likeness": likeness, "curve": curve}
    atomic_write_text(Path(path), json.dumps(record, indent=1) + "\n")


def _announce_recipe(given: dict) -> dict:
    """The device's default recipe for the fields not given on the command line, printed in one line."""
    from .runtime import get_device, resolve_dtype
    from .train import TrainConfig, recipe_for
    device = get_device(given.get("device", "auto"))
    name, recipe = recipe_for(device)
    recipe = {k: v for k, v in recipe.items() if k not in given}
    tc = TrainConfig(**{**recipe, **given})
    dtype = str(resolve_dtype(tc.dtype, device)).replace("torch.", "")
    where = device.type + (f" ({__import__('torch').cuda.get_device_name(device)})" if device.type == "cuda" else "")
    print(f"recipe: {name} default on {where}: preset {tc.preset}, batch {tc.batch_size} x seq {tc.seq_len}, "
          f"{tc.steps} steps, lr {tc.lr:g}, {dtype} (--dtype {tc.dtype}); any flag overrides it")
    return recipe


def _save_training_plots(res) -> list[str]:
    """loss.png and expert_load.png in the run folder (the library draws, the command line writes files)."""
    from .viz.training import plot_expert_load, plot_loss_curves
    plot_loss_curves(res.history).savefig(res.out_dir / "loss.png", dpi=110, bbox_inches="tight")
    if not res.expert_loads:
        return ["loss.png"]
    plot_expert_load(res.expert_loads).savefig(res.out_dir / "expert_load.png", dpi=110, bbox_inches="tight")
    return ["loss.png", "expert_load.png"]


def _print_samples(model, tok, n: int, prompts=("def ", "import ", "class ")) -> None:
    import torch

    from .generate import generate
    device = next(model.parameters()).device
    for i, p in enumerate(prompts[:n]):
        ids = torch.tensor([tok.encode(p)], device=device)
        out = generate(model, ids, max_new_tokens=96, temperature=0.8, top_k=50, seed=i)
        print(f"\n--- sample {i + 1} (prompt {p!r}) ---\n{tok.decode(out[0].tolist())}")


def _generate(args) -> int:
    from .data import load_tokenizer
    from .runtime import get_device
    from .train import load_model
    try:
        for name in ("temperature", "top_p"):
            v = getattr(args, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {v}")
        if args.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
        model = load_model(args.ckpt, get_device(args.device or "cpu"))
        tok = _load_tokenizer_arg(load_tokenizer, args.tokenizer, args.ckpt)
        return _generate_with(args, model, tok)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _load_tokenizer_arg(load_tokenizer, path, ckpt):
    """load_tokenizer(path), with errors that name the --tokenizer argument; without one, the tokenizer saved with
    the checkpoint (the packaged vocab-8192 one for checkpoints that carry none)."""
    if path is None:
        from .train import checkpoint_tokenizer
        return load_tokenizer(checkpoint_tokenizer(ckpt))
    if not Path(path).is_file():
        raise FileNotFoundError(f"--tokenizer {path}: no such file")
    try:
        return load_tokenizer(path)
    except Exception as e:  # noqa: BLE001 (the tokenizers library raises a bare Exception on a malformed file)
        raise ValueError(f"--tokenizer {path}: not a tokenizer.json ({e})") from None


def _generate_with(args, model, tok) -> int:
    import torch

    from .generate import compare_speculative, fim_prompt, generate
    if tok.vocab_size > model.cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the checkpoint's model only "
                         f"{model.cfg.vocab_size}: pass the tokenizer it was trained with (--tokenizer)")
    if args.fim_prefix is not None or args.fim_suffix is not None:
        ids = fim_prompt(tok, args.fim_prefix or "", args.fim_suffix or "")
    else:
        ids = tok.encode(args.prompt)
    prompt = torch.tensor([ids], device=next(model.parameters()).device)
    if args.speculative == "mtp":
        r = compare_speculative(model, prompt, args.max_new_tokens)
        st = r["stats"]
        print(tok.decode(r["tokens"][0].tolist()))
        print(f"\n[speculative mtp] acceptance rate {st.acceptance_rate:.1%} ({st.accepted}/{st.drafted}), "
              f"{st.tokens_per_forward:.2f} tokens per main forward, speed-up {r['speedup']:.2f}x "
              f"({r['plain_s']:.2f}s plain greedy vs {r['speculative_s']:.2f}s); identical to greedy: {r['identical']}")
        return 0
    out = generate(model, prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, seed=args.seed, eos_id=tok.eos_id)
    new = out[0, len(ids):].tolist()
    if args.fim_prefix is not None or args.fim_suffix is not None:
        middle = tok.decode([t for t in new if t != tok.eos_id])
        print(f"{args.fim_prefix or ''}\033[1m{middle}\033[0m{args.fim_suffix or ''}")
    else:
        print(tok.decode(out[0].tolist()))
    return 0


TRAIN_HELP = {   # one line per TrainConfig field: what `python -m dsv3_edu train --help` says about it
    "preset": "model preset (nano, cpu, tiny, small) or a config JSON path",
    "steps": "optimizer steps",
    "batch_size": "sequences per micro-batch",
    "seq_len": "tokens per sequence",
    "grad_accum": "micro-batches per optimizer step (gradient accumulation)",
    "lr": "peak learning rate (after warmup; then cosine decay)",
    "min_lr_ratio": "the cosine ends at lr x this at the last step",
    "warmup_steps": "linear warmup steps from 0 to lr",
    "weight_decay": "AdamW weight decay",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "grad_clip": "clip the global gradient norm to this value",
    "eval_every": "validate every this many steps",
    "eval_batches": "validation batches per evaluation",
    "log_every": "log a metrics row every this many steps",
    "save_every": "save a checkpoint every this many steps",
    "seed": "random seed (weights, data order)",
    "device": "auto (CUDA, then MPS, then CPU), cpu, cuda or mps",
    "dtype": "auto: bf16 autocast with fp32 master weights where the hardware computes bf16 natively (CUDA, CPUs "
             "with AVX512-BF16 or AMX), fp32 elsewhere; fp32 or bf16 force either",
    "mfu": "measure this machine's matmul peak at the start and log model FLOP/s and MFU",
    "out_dir": "run folder: checkpoint, metrics.jsonl, plots",
    "data_source": "a text file or folder to train on (default: the Python standard library's sources)",
    "data_max_bytes": "cap on the corpus size in bytes (default: the data package's)",
    "plots": "write loss.png and expert_load.png to the run folder",
}


def main(argv: list[str] | None = None) -> int:
    from .train import CPU_RECIPE, GPU_RECIPE, TrainConfig
    p = _Parser(prog="python -m dsv3_edu", description="dsv3-edu: DeepSeek-V3 from scratch")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a model (default: the cpu preset on the stdlib corpus, docs/recipe.md)")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if f.name in ("model_overrides", "world_size"):     # world_size: set by torchrun, recorded only
            continue
        d = CPU_RECIPE.get(f.name, getattr(defaults, f.name))     # what the command uses on a CPU
        kind = type(d) if d is not None else (int if f.name.endswith("bytes") else str)
        what = TRAIN_HELP.get(f.name, f.name.replace("_", " "))
        if kind is bool:
            t.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, action=argparse.BooleanOptionalAction,
                           default=None, help=f"{what} (default: {'on' if d else 'off'})")
        else:
            gpu = f"; on CUDA {GPU_RECIPE[f.name]}" if f.name in GPU_RECIPE else ""
            t.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None,
                           help=f"{what} (default: {d}{gpu})")
    t.add_argument("--set", nargs="*", metavar="FIELD=VALUE", help="model config overrides, e.g. n_mtp=0")
    t.add_argument("--resume", help="continue a run from its folder (same data order, optimizer, biases)")
    t.add_argument("--samples", type=int, default=3, help="print this many samples at the end and score the "
                   "Python-likeness of 12 fixed-prompt samples (0: neither)")
    t.add_argument("--record", metavar="FILE", help="also write the run's figures, curve, machine, command and "
                   "wall time to FILE as JSON (e.g. results/default_run.json)")
    t.set_defaults(func=_train)

    g = sub.add_parser("generate", help="generate from a checkpoint")
    g.add_argument("--ckpt", default="runs/default", help="run folder or checkpoint folder")
    g.add_argument("--prompt", default="def ", help="text to continue (default: %(default)r)")
    g.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=0.8,
                   help="sampling temperature; 0 = greedy (default: %(default)s)")
    g.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (default: %(default)s)")
    g.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: the smallest set of tokens with this total probability (default: off)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    g.add_argument("--speculative", choices=["mtp"], help="greedy speculative decoding with the MTP drafter")
    g.add_argument("--fim-prefix", help="code before the hole (fill-in-the-middle)")
    g.add_argument("--fim-suffix", help="code after the hole")
    g.add_argument("--tokenizer", help="tokenizer.json (default: the checkpoint's, else the packaged one)")
    g.add_argument("--device", help="cpu, cuda, mps (default cpu)")
    g.set_defaults(func=_generate)

    a = sub.add_parser("accounting", help="parameter and KV-cache accounting (see dsv3_edu.accounting)")
    a.add_argument("rest", nargs=argparse.REMAINDER,
                   help="options of python -m dsv3_edu.accounting: --preset NAME | --config FILE, --json")
    a.set_defaults(func=lambda args: __import__("dsv3_edu.accounting", fromlist=["main"]).main(args.rest))

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["accounting"]:   # handed over whole: argparse's REMAINDER would not take "--config ..."
        from .accounting import main as accounting_main
        return accounting_main(argv[1:])
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
