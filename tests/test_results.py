"""The committed reference results and the figures the README quotes from them: no hand-typed number drifts
from the file it came from."""
from pathlib import Path

from dsv3_edu.evaluate import format_bits_per_byte, format_python_likeness
from dsv3_edu.experiments import load_ablations, load_run_record

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_default_run_record_matches_readme():
    rec = load_run_record()
    ev, tc = rec["final_eval"], rec["train_config"]
    assert rec["command"] == "python -m dsv3_edu train --record results/default_run.json"
    assert format_bits_per_byte(ev["val_bpb"], ev) in README
    assert f"final validation loss {ev['val_loss']:.4f} nats/token" in README
    assert f"{rec['tokens_per_s']:,.0f} tokens/s" in README
    assert f"{tc['steps']} steps of {tc['batch_size']} x {tc['seq_len']} tokens" in README
    s, c = rec["python_likeness"]["samples"], rec["python_likeness"]["heldout"]
    assert format_python_likeness(s, c) in README                 # the trainer's own line, as printed
    minutes, seconds = divmod(round(rec["wall_s"]), 60)
    assert f"{minutes} min {seconds} s wall" in README
    assert f"{ev['val_bpb'] / ev['xz']:.2f}x xz" in README
    # the record is the default recipe's run
    from dsv3_edu.train import CPU_RECIPE
    assert {k: tc[k] for k in CPU_RECIPE} == CPU_RECIPE


def test_readme_ablation_intervals_come_from_the_file():
    comps = load_ablations()["comparisons"]
    for key in ("dense_vs_moe@400steps", "dense_vs_moe@moe32"):
        p = comps[key]["paired"]["val_loss"]
        lo, hi = p["ci95"]
        assert f"{p['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}]".lstrip("+") in README, key
        assert not p["excludes_zero"]


def test_sampling_table_in_docs_is_the_one_the_file_makes():
    import importlib.util
    import json
    spec = importlib.util.spec_from_file_location("sweep_sampling", ROOT / "benchmarks" / "sweep_sampling.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    res = json.loads((ROOT / "results" / "sweep_sampling.json").read_text())
    doc = (ROOT / "docs" / "recipe.md").read_text()
    assert f"{sweep.BEGIN}\n{sweep.table(res)}\n{sweep.END}" in doc
    best = max(res["rows"], key=lambda r: r["unique_share"])
    assert f"the best is {best['unique_share']:.0%} at temperature {best['temperature']:g}" in doc
    # the trainer's temperature-0.8 share at 48 samples agrees with the record's 12-sample figure within noise
    row = next(r for r in res["rows"] if r["temperature"] == 0.8)
    lo, hi = row["ci95"]
    assert lo <= load_run_record()["python_likeness"]["samples"]["share"] <= hi


def test_sampling_sweep_loads_and_plots(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import pytest

    from dsv3_edu.experiments import load_sampling_sweep
    from dsv3_edu.viz.inference import plot_sampling_sweep
    res = load_sampling_sweep()
    fig = plot_sampling_sweep(res)
    ax = fig.axes[0]
    assert len(ax.containers) == 2                                   # two shares with their intervals
    first = ax.containers[0].lines[0].get_ydata()
    rows = sorted(res["rows"], key=lambda r: r["temperature"])
    assert list(first) == pytest.approx([r["share"] / res["heldout"]["share"] for r in rows])
    with pytest.raises(FileNotFoundError, match="benchmarks/sweep_sampling.py"):
        load_sampling_sweep(tmp_path / "missing.json")


def test_long_run_figures_in_readme_come_from_the_file():
    from dsv3_edu.experiments import results_path
    rec = load_run_record(results_path("long_run.json"))
    ev, tc = rec["final_eval"], rec["train_config"]
    assert rec["command"] == "python -m dsv3_edu train --steps 6000 --out-dir runs/long --record results/long_run.json"
    from dsv3_edu.train import CPU_RECIPE
    assert {k: tc[k] for k in CPU_RECIPE if k != "steps"} == {k: v for k, v in CPU_RECIPE.items() if k != "steps"}
    assert f"{rec['wall_s'] / 60:.1f} min on the same machine" in README
    assert f"**{ev['val_bpb']:.3f} bits/byte = {ev['val_bpb'] / ev['xz']:.2f}x xz**" in README
    val = [r for r in rec["curve"] if "val_bpb" in r]
    first = next(r for r in val if r["val_bpb"] < ev["xz"])
    assert f"below xz's {ev['xz']:.3f}\nafter {first['tokens'] / 1e6:.1f}M tokens" in README
    s = rec["python_likeness"]["samples"]
    assert f"{s['share']:.0%} of their statements compiling ({s['parsed']} of {s['statements']})" in README
    half = next(r for r in val if r["tokens"] == val[-1]["tokens"] // 2)
    assert f"gained {half['val_bpb'] - val[-1]['val_bpb']:.2f} bits over its last doubling" in README
