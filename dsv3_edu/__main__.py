"""Command line: ``python -m dsv3_edu {train,generate,accounting}``."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path


def _train(args) -> int:
    from .train import TrainConfig, TrainingDiverged, train
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if getattr(args, f.name, None) is not None and f.name != "model_overrides"}
    try:
        recipe = {} if args.resume else _announce_recipe(given)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    tc = TrainConfig(**{**recipe, **given})
    if args.set:
        tc.model_overrides = {k: json.loads(v) if v[:1] in "0123456789-[{tf" else v
                              for k, v in (kv.split("=", 1) for kv in args.set)}
    try:
        res = train(tc, resume=args.resume)
    except (TrainingDiverged, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
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
    if res.out_dir:
        pictures = _save_training_plots(res) if tc.plots else []
        print(f"checkpoint, metrics.jsonl{''.join(', ' + p for p in pictures)} in {res.out_dir}")
    if args.samples:
        _print_samples(res.model, args.samples, res.out_dir)
    return 0


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


def _print_samples(model, n: int, run_dir=None, prompts=("def ", "import ", "class ")) -> None:
    import torch

    from .data import load_tokenizer
    from .generate import generate
    tok = load_tokenizer(_checkpoint_tokenizer(run_dir))
    device = next(model.parameters()).device
    for i, p in enumerate(prompts[:n]):
        ids = torch.tensor([tok.encode(p)], device=device)
        out = generate(model, ids, max_new_tokens=96, temperature=0.8, top_k=50, seed=i)
        print(f"\n--- sample {i + 1} (prompt {p!r}) ---\n{tok.decode(out[0].tolist())}")


def _checkpoint_tokenizer(run_dir):
    """The tokenizer.json saved with a run's checkpoint, or None (the packaged vocab-8192 one) if there is none."""
    if run_dir is None:
        return None
    for p in (Path(run_dir) / "checkpoint" / "tokenizer.json", Path(run_dir) / "tokenizer.json"):
        if p.is_file():
            return p
    return None


def _generate(args) -> int:
    import torch

    from .data import load_tokenizer
    from .generate import compare_speculative, fim_prompt, generate
    from .train import load_model
    try:
        model = load_model(args.ckpt, args.device or "cpu")
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    tok = load_tokenizer(args.tokenizer or _checkpoint_tokenizer(args.ckpt))
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


def main(argv: list[str] | None = None) -> int:
    from .train import TrainConfig
    p = argparse.ArgumentParser(prog="python -m dsv3_edu", description="dsv3-edu: DeepSeek-V3 from scratch")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a model (default: the cpu preset on the stdlib corpus, docs/recipe.md)")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if f.name in ("model_overrides",):
            continue
        d = getattr(defaults, f.name)
        kind = type(d) if d is not None else (int if f.name.endswith("bytes") else str)
        if kind is bool:
            t.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, action=argparse.BooleanOptionalAction,
                           default=None)
        else:
            t.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None,
                           help=f"default: {d}")
    t.add_argument("--set", nargs="*", metavar="FIELD=VALUE", help="model config overrides, e.g. n_mtp=0")
    t.add_argument("--resume", help="continue a run from its folder (same data order, optimizer, biases)")
    t.add_argument("--samples", type=int, default=3, help="print this many samples at the end (0: none)")
    t.set_defaults(func=_train)

    g = sub.add_parser("generate", help="generate from a checkpoint")
    g.add_argument("--ckpt", default="runs/default", help="run folder or checkpoint folder")
    g.add_argument("--prompt", default="def ")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--speculative", choices=["mtp"], help="greedy speculative decoding with the MTP drafter")
    g.add_argument("--fim-prefix", help="code before the hole (fill-in-the-middle)")
    g.add_argument("--fim-suffix", help="code after the hole")
    g.add_argument("--tokenizer", help="tokenizer.json (default: the checkpoint's, else the packaged one)")
    g.add_argument("--device", help="cpu, cuda, mps (default cpu)")
    g.set_defaults(func=_generate)

    a = sub.add_parser("accounting", help="parameter and KV-cache accounting (see dsv3_edu.accounting)")
    a.add_argument("rest", nargs=argparse.REMAINDER)
    a.set_defaults(func=lambda args: __import__("dsv3_edu.accounting", fromlist=["main"]).main(args.rest))

    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
