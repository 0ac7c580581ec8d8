"""The ablation runner: equal-compute variants over seeds, the dense model matched in activated params."""
import pytest
from conftest import TOY_MODEL

from dsv3_edu.accounting import param_counts
from dsv3_edu.config import get_config
from dsv3_edu.experiments import (
    Variant,
    format_summary,
    matched_dense_inter_dim,
    matched_dense_overrides,
    mean_histories,
    run_ablation,
    summarize,
    variant_train_config,
)
from dsv3_edu.train import TrainConfig


def base_tc(**kw) -> TrainConfig:
    d = dict(preset="nano", model_overrides=dict(TOY_MODEL), steps=4, batch_size=2, seq_len=16, warmup_steps=1,
             eval_every=2, eval_batches=1, log_every=1, lr=3e-3, out_dir=None, plots=False)
    d.update(kw)
    return TrainConfig(**d)


@pytest.mark.parametrize("preset", ["nano", "tiny"])
def test_matched_dense_inter_dim_matches_activated_params(preset):
    cfg = get_config(preset)
    inter = matched_dense_inter_dim(cfg)
    target = param_counts(cfg)["activated_params"]
    dense = lambda i: param_counts(cfg.replace(n_dense_layers=cfg.n_layers, inter_dim=i))["total_params"]  # noqa: E731
    # closest integer: no neighbour is closer, and the gap is at most half a step of 3 * dim * n_layers
    assert abs(dense(inter) - target) <= abs(dense(inter - 1) - target)
    assert abs(dense(inter) - target) <= abs(dense(inter + 1) - target)
    assert abs(dense(inter) - target) <= 3 * cfg.dim * cfg.n_layers / 2
    assert matched_dense_overrides(cfg) == {"n_dense_layers": cfg.n_layers, "inter_dim": inter}


def test_matched_dense_known_values():
    # nano: 2,548,896 activated; every layer dense at 258 gives 2,549,152 (the gate makes it non-integer)
    assert matched_dense_inter_dim(get_config("nano")) == 258
    assert matched_dense_inter_dim(get_config("tiny")) == 676


def test_matched_dense_needs_moe_layers():
    cfg = get_config("nano", n_dense_layers=3)
    with pytest.raises(ValueError, match="MoE layers"):
        matched_dense_inter_dim(cfg)


def test_variant_train_config_merges_and_rejects():
    base = base_tc(model_overrides={"n_mtp": 1, "dim": 32})
    tc = variant_train_config(base, {"n_mtp": 0}, seed=7)
    assert tc.model_overrides == {"n_mtp": 0, "dim": 32} and tc.seed == 7 and tc.out_dir is None
    assert base.model_overrides == {"n_mtp": 1, "dim": 32}, "the base config must not be mutated"
    tc = variant_train_config(base, Variant(model={"fp8": True}, train={"lr": 1e-3}), seed=0)
    assert tc.lr == 1e-3 and tc.model_overrides["fp8"] is True
    with pytest.raises(ValueError, match="n_mpt"):
        variant_train_config(base, {"n_mpt": 0}, seed=0)
    with pytest.raises(ValueError, match="stepz"):
        variant_train_config(base, Variant(train={"stepz": 3}), seed=0)
    with pytest.raises(ValueError, match="seed"):
        variant_train_config(base, Variant(train={"seed": 3}), seed=0)
    with pytest.raises(ValueError, match="variant"):
        variant_train_config(base, ["n_mtp", 0], seed=0)


def test_run_ablation_rows_summary_and_histories(dataset, capsys):
    variants = {"moe": {}, "no mtp": {"n_mtp": 0}}
    rows = run_ablation(base_tc(), variants, seeds=(0, 1), dataset=dataset, keep_models=True)
    assert [(r.variant, r.seed) for r in rows] == [("moe", 0), ("no mtp", 0), ("moe", 1), ("no mtp", 1)]
    assert "no mtp" in capsys.readouterr().out
    for r in rows:
        assert r.tokens == 4 * 2 * 16, "every variant sees the same tokens"
        assert r.final_val_loss == r.history[-1]["val_loss"] and r.tokens_per_s > 0
        assert r.result is not None and (r.result.model.cfg.n_mtp == (0 if r.variant == "no mtp" else 1))
    assert rows[0].final_val_loss != rows[2].final_val_loss, "different seeds give different runs"
    # the same seed is reproducible
    again = run_ablation(base_tc(), {"moe": {}}, seeds=(0,), dataset=dataset, verbose=False)
    assert again[0].final_val_loss == pytest.approx(rows[0].final_val_loss, abs=1e-6)

    summary = summarize(rows)
    assert [s["variant"] for s in summary] == ["moe", "no mtp"]
    moe = summary[0]
    assert moe["val_loss"] == pytest.approx((rows[0].final_val_loss + rows[2].final_val_loss) / 2)
    assert moe["val_spread"] == pytest.approx(abs(rows[0].final_val_loss - rows[2].final_val_loss) / 2)
    assert moe["delta_vs_reference"] == 0
    assert summary[1]["delta_vs_reference"] == pytest.approx(summary[1]["val_loss"] - moe["val_loss"])
    assert moe["paired_deltas"] == {0: 0.0, 1: 0.0}
    assert summary[1]["paired_deltas"][1] == pytest.approx(rows[3].final_val_loss - rows[2].final_val_loss)
    assert summary[1]["paired_deltas"][0] == pytest.approx(rows[1].final_val_loss - rows[0].final_val_loss)
    assert summary[1]["total_params"] == param_counts(get_config("nano", **TOY_MODEL))["total_params"]
    other = summarize(rows, reference="no mtp")
    assert other[1]["delta_vs_reference"] == 0
    with pytest.raises(ValueError, match="missing"):
        summarize(rows, reference="missing")
    table = format_summary(summary)
    assert "no mtp" in table and f"{summary[1]['val_loss']:.4f}" in table

    hist = mean_histories(rows)
    assert list(hist) == ["moe", "no mtp"] and len(hist["moe"]) == 4
    last = hist["moe"][-1]
    assert last["val_loss"] == pytest.approx(moe["val_loss"])
    assert last["main_loss"] == pytest.approx((rows[0].history[-1]["main_loss"] + rows[2].history[-1]["main_loss"]) / 2)
    assert "val_loss" not in hist["moe"][0], "step 1 is not an eval step"


def test_run_ablation_checks_before_training(dataset):
    with pytest.raises(ValueError, match="at least one variant"):
        run_ablation(base_tc(), {}, dataset=dataset)
    with pytest.raises(ValueError, match="seeds"):
        run_ablation(base_tc(), {"a": {}}, seeds=(), dataset=dataset)
    with pytest.raises(ValueError, match="seeds"):
        run_ablation(base_tc(), {"a": {}}, seeds=(1, 1), dataset=dataset)
    with pytest.raises(ValueError, match="n_activated_experts"):   # a bad model config fails before any run
        run_ablation(base_tc(), {"a": {}, "bad": {"n_activated_experts": 99}}, dataset=dataset)


# ----------------------------------------------------------------------------- reference ablations
def test_paired_interval_by_hand():
    # diffs 1, 2, 3, 4: mean 2.5, sd sqrt(5/3) = 1.291, t_{0.975,3} = 3.182 -> 2.5 -/+ 3.182 * 1.291 / 2
    from dsv3_edu.experiments import paired_interval
    p = paired_interval([1, 2, 3, 4])
    assert p["n"] == 4 and p["mean"] == pytest.approx(2.5) and p["sd"] == pytest.approx(1.2910, abs=1e-4)
    assert p["t"] == pytest.approx(3.182, abs=1e-3)
    assert p["ci95"] == pytest.approx([0.446, 4.554], abs=1e-3) and p["excludes_zero"] is True
    assert paired_interval([-1, 1, 2])["excludes_zero"] is False
    assert paired_interval([-3, -2, -2.5])["excludes_zero"] is True, "an interval below zero excludes it too"
    with pytest.raises(ValueError, match="at least 2"):
        paired_interval([1.0])


def test_t_quantiles_match_the_printed_table():
    from dsv3_edu.experiments import student_t_two_sided, t_quantile_975
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 7: 2.365, 10: 2.228, 30: 2.042}
    for dof, t in table.items():
        assert t_quantile_975(dof) == pytest.approx(t, abs=1e-3), dof
    assert student_t_two_sided(0.0, 3) == 0.0 and student_t_two_sided(1e6, 4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile_975(0)


def test_parse_budget_steps_and_tokens():
    from dsv3_edu.experiments import parse_budget
    assert parse_budget("300", 512) == 300
    assert parse_budget("200ktok", 512) == 391            # ceil(200000 / 512)
    assert parse_budget("1.5Mtok", 1000) == 1500
    assert parse_budget("1024tok", 512) == 2
    for bad in ("abc", "0", "-3", "xtok"):
        with pytest.raises(ValueError, match="--budget"):
            parse_budget(bad, 512)


def test_reference_ablation_json_schema(dataset, tmp_path):
    import json

    from dsv3_edu.experiments import COMPARISONS, format_ablation_table, run_reference_ablation
    out = tmp_path / "results" / "ablations.json"
    base = base_tc(steps=2, eval_every=2, log_every=1)
    comps = run_reference_ablation(base, seeds=(0, 1), only=["dense_vs_moe", "balance"], out=out,
                                   command="test-cmd", dataset=dataset, progress=False)
    data = json.loads(out.read_text())
    assert data["schema"] == "dsv3_edu.ablations/1" and data["command"] == "test-cmd"
    assert set(data["machine"]) >= {"cpu", "cores", "torch"}
    assert list(data["comparisons"]) == ["dense_vs_moe", "balance"] == list(comps)
    for name, c in data["comparisons"].items():
        assert c["a"] == COMPARISONS[name][1] and c["b"] == COMPARISONS[name][2]
        assert c["complete"] is True and c["status"] == "complete" and c["seeds"] == [0, 1]
        assert c["budget"]["steps"] == 2 and c["budget"]["tokens"] == 2 * 2 * 16
        assert c["command"] == "test-cmd" and c["wall_s"] >= 0
        assert "train_overrides" not in c, "model-only comparisons keep their format"
        assert [(r["variant"], r["seed"]) for r in c["runs"]] == [(c["a"], 0), (c["b"], 0), (c["a"], 1), (c["b"], 1)]
        by = {(r["variant"], r["seed"]): r for r in c["runs"]}
        for r in c["runs"]:
            assert len(r["curve"]) == 2 and r["curve"][-1]["step"] == 2 and "val_loss" in r["curve"][-1]
            assert r["final"]["val_loss"] == r["curve"][-1]["val_loss"]
        p = c["paired"]["val_loss"]
        diffs = [by[(c["b"], s)]["final"]["val_loss"] - by[(c["a"], s)]["final"]["val_loss"] for s in (0, 1)]
        assert [p["diffs"]["0"], p["diffs"]["1"]] == pytest.approx(diffs, abs=1e-5)
        assert p["n"] == 2 and p["ci95"][0] <= p["mean"] <= p["ci95"][1]
        assert p["excludes_zero"] == (p["ci95"][0] > 0 or p["ci95"][1] < 0)
    # the MoE model is shared: its runs are the same in both comparisons (one training per config and seed)
    moe = data["comparisons"]["dense_vs_moe"]["runs"][0]["final"]["val_loss"]
    assert data["comparisons"]["balance"]["runs"][0]["final"]["val_loss"] == moe
    assert "maxvio" in data["comparisons"]["balance"]["paired"]
    dense = data["comparisons"]["dense_vs_moe"]["params"]
    assert abs(dense["MoE"]["activated"] - dense["dense (same activated params)"]["activated"]) \
        <= 3 * TOY_MODEL["dim"] * TOY_MODEL["n_layers"]
    # a second invocation adds its comparison and keeps the others
    run_reference_ablation(base, seeds=(0, 1), only=["mtp"], out=out, command="cmd-2", dataset=dataset,
                           progress=False)
    data = json.loads(out.read_text())
    assert list(data["comparisons"]) == ["dense_vs_moe", "balance", "mtp"]
    assert data["commands"] == ["test-cmd", "cmd-2"] and data["comparisons"]["balance"]["command"] == "test-cmd"
    table = format_ablation_table(data["comparisons"])
    ci = data["comparisons"]["mtp"]["paired"]["val_loss"]["ci95"]
    assert f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" in table and table.count("\n") == 4


def test_report_command_prints_table_and_readings(dataset, tmp_path, capsys):
    from dsv3_edu.experiments import format_ablation_table, load_ablations, main, run_reference_ablation
    out = tmp_path / "ablations.json"
    run_reference_ablation(base_tc(steps=2, eval_every=2), seeds=(0, 1), only=["balance"], out=out,
                           command="cmd", dataset=dataset, progress=False)
    capsys.readouterr()
    main(["report", str(out)])
    printed = capsys.readouterr().out
    comps = load_ablations(out)["comparisons"]
    assert format_ablation_table(comps) in printed
    assert "- balance (aux loss - aux-loss-free, val_loss" in printed and "maxvio" in printed
    with pytest.raises(FileNotFoundError, match="python -m dsv3_edu.experiments ablation"):
        load_ablations(tmp_path / "missing.json")


def test_reference_ablation_checks_before_training(dataset):
    from dsv3_edu.experiments import run_reference_ablation
    with pytest.raises(ValueError, match="unknown comparison"):
        run_reference_ablation(base_tc(), only=["dense"], dataset=dataset)
    with pytest.raises(ValueError, match="2 distinct seeds"):
        run_reference_ablation(base_tc(), seeds=(0,), dataset=dataset)


def _fake_comparison(name, diffs, a_loss=5.0):
    """A comparison record in the results-file format, with made-up final losses (B = A + diff per seed)."""
    from dsv3_edu.experiments import COMPARISONS, comparison_stats
    _, a, b, _, _ = COMPARISONS[name]
    runs = []
    for s, d in enumerate(diffs):
        for label, loss in ((a, a_loss), (b, a_loss + d)):
            runs.append({"variant": label, "seed": s, "final": {"val_loss": loss},
                         "curve": [{"step": 1, "tokens": 10, "main_loss": loss + 1},
                                   {"step": 2, "tokens": 20, "main_loss": loss, "val_loss": loss}]})
    comp = {"question": "q", "a": a, "b": b, "seeds": list(range(len(diffs))), "runs": runs, "complete": True,
            "budget": {"steps": 2, "tokens": 20}}
    comp["paired"] = comparison_stats(comp)
    return comp


def test_ablation_reading_is_generated_from_the_numbers():
    from dsv3_edu.experiments import ablation_reading
    moe = _fake_comparison("dense_vs_moe", [0.10, 0.12, 0.11, 0.13])
    text = ablation_reading("dense_vs_moe", moe)
    ci = moe["paired"]["val_loss"]["ci95"]
    assert f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" in text and "excludes zero" in text
    assert "MoE is better" in text and "the same sign as" in text
    worse = ablation_reading("mtp", _fake_comparison("mtp", [-0.10, -0.12, -0.11, -0.13]))
    assert "MTP off is better" in worse and "the opposite sign to" in worse
    noisy = ablation_reading("balance", _fake_comparison("balance", [0.1, -0.1, 0.05, -0.02]))
    assert "contains zero" in noisy and "not separated" in noisy
    balance = ablation_reading("balance", _fake_comparison("balance", [0.10, 0.12, 0.11, 0.13]))
    assert "aux-loss-free is better" in balance and "Compare with the sources" in balance
    fp8 = ablation_reading("fp8", _fake_comparison("fp8", [0.0010, 0.0011, 0.0012, 0.0010], a_loss=5.0))
    assert "within the report's 0.25% bound" in fp8                      # about +0.02% relative
    partial = _fake_comparison("fp8", [0.01])
    partial.update(complete=False, status="partial: 1 of 4 seed pairs finished")
    assert "no interval" in ablation_reading("fp8", partial) and "partial: 1 of 4" in ablation_reading("fp8", partial)


def test_ablation_plots():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dsv3_edu.viz.ablations import plot_ablation_curves, plot_intervals
    comps = {"dense_vs_moe": _fake_comparison("dense_vs_moe", [0.1, 0.2]),
             "mtp": _fake_comparison("mtp", [0.0, 0.1])}
    fig = plot_intervals(comps)
    assert len(fig.axes) == 2 and "dense_vs_moe" in fig.axes[0].get_title()
    fig2 = plot_ablation_curves(comps["mtp"])
    assert len(fig2.axes[0].lines) == 4, "one line per variant and seed"
    with pytest.raises(ValueError, match="maxvio"):
        plot_intervals(comps, metric="maxvio")
    plt.close("all")


def test_tagged_runs_on_different_seeds_merge(dataset, tmp_path):
    from dsv3_edu.experiments import load_ablations, merge_results, run_reference_ablation
    base = base_tc(steps=2, eval_every=2)
    parts = []
    for seeds in ((0, 1), (2, 3)):
        out = tmp_path / f"part{seeds[0]}.json"
        run_reference_ablation(base, seeds=seeds, only=["fp8"], out=out, command=f"cmd{seeds}", dataset=dataset,
                               tag="short", progress=False)
        parts.append(load_ablations(out))
    assert list(parts[0]["comparisons"]) == ["fp8@short"] and parts[0]["comparisons"]["fp8@short"]["name"] == "fp8"
    merged = merge_results(parts)["fp8@short"]
    assert merged["seeds"] == [0, 1, 2, 3] and merged["complete"] and merged["status"] == "complete"
    assert [(r["variant"] == merged["a"], r["seed"]) for r in merged["runs"]] == \
        [(True, 0), (False, 0), (True, 1), (False, 1), (True, 2), (False, 2), (True, 3), (False, 3)]
    p = merged["paired"]["val_loss"]
    assert p["n"] == 4 and list(p["diffs"]) == ["0", "1", "2", "3"]
    assert p["diffs"]["2"] == parts[1]["comparisons"]["fp8@short"]["paired"]["val_loss"]["diffs"]["2"]
    assert merged["commands"] == ["cmd(0, 1)", "cmd(2, 3)"]
    # a comparison found in one file only passes through unchanged (merging a part into the committed file)
    fake = _fake_comparison("mtp", [0.1, 0.2])
    again = merge_results([{"comparisons": {"fp8@short": merged}}, {"comparisons": {"mtp": fake}}])
    assert again == {"fp8@short": merged, "mtp": fake}
    other = load_ablations(tmp_path / "part0.json")
    other["comparisons"]["fp8@short"]["budget"] = {**other["comparisons"]["fp8@short"]["budget"], "steps": 3}
    with pytest.raises(ValueError, match="budget"):
        merge_results([parts[0], other])


def test_bf16_comparison_is_a_train_override(dataset, tmp_path, capsys):
    from dsv3_edu.experiments import COMPARISONS, load_ablations, main, run_reference_ablation
    base = base_tc(steps=3, eval_every=3, dtype="fp32")            # what the command line's base pins
    _, a, b, spec, _ = COMPARISONS["bf16"]
    assert variant_train_config(base, spec, 0).dtype == "bf16"
    assert variant_train_config(base, spec, 0).model_overrides == base.model_overrides, "the model is unchanged"
    out = tmp_path / "bf16.json"
    run_reference_ablation(base, seeds=(0, 1), only=["bf16"], out=out, command="cmd", dataset=dataset,
                           progress=False)
    c = load_ablations(out)["comparisons"]["bf16"]
    assert c["overrides"] == {a: {}, b: {}} and c["train_overrides"] == {a: {}, b: {"dtype": "bf16"}}
    assert c["budget"]["dtype"] == "fp32" and c["complete"]
    # every run records what it computed in (TrainResult.dtype): A in fp32, B under bf16 autocast
    assert [(r["variant"], r["seed"], r["dtype"]) for r in c["runs"]] == \
        [(a, 0, "fp32"), (b, 0, "bf16"), (a, 1, "fp32"), (b, 1, "bf16")]
    by = {(r["variant"], r["seed"]): r["final"]["val_loss"] for r in c["runs"]}
    # same seed = same data and the same initial weights; the losses differ only by the bf16 arithmetic
    assert by[(b, 0)] != by[(a, 0)] and abs(by[(b, 0)] - by[(a, 0)]) < 0.05
    assert c["paired"]["val_loss"]["n"] == 2
    capsys.readouterr()
    main(["report", str(out)])
    assert "- bf16 trajectory (main_loss, 3 logged points, 2 seeds)" in capsys.readouterr().out
    # A is the base itself: a bf16 base would make the comparison bf16 vs bf16
    with pytest.raises(ValueError, match="same run as A"):
        run_reference_ablation(base_tc(dtype="bf16"), seeds=(0, 1), only=["bf16"], dataset=dataset)


def test_trajectory_gap_by_hand():
    from dsv3_edu.experiments import trajectory_gap, trajectory_reading
    comp = _fake_comparison("bf16", [0.01, 0.03, 0.02])
    for r in comp["runs"]:                       # give A (and B with it) a seed spread: +0, +0.1, +0.2
        for p in r["curve"]:
            p["main_loss"] += 0.1 * r["seed"]
    t = trajectory_gap(comp)
    assert t["seeds"] == [0, 1, 2] and [p["step"] for p in t["points"]] == [1, 2]
    for p in t["points"]:
        assert p["gap"] == pytest.approx(0.02) and p["a_sd"] == pytest.approx(0.1)
        assert p["paired_sd"] == pytest.approx(0.01)
    assert "largest gap / spread = 0.20" in trajectory_reading("bf16", comp)
    assert "within one seed sd at 2 of 2 points; mean bf16 autocast is above mean FP32 at 2 of 2" \
        in trajectory_reading("bf16", comp)
    comp["runs"] = comp["runs"][:2]
    with pytest.raises(ValueError, match=">= 2 seeds"):
        trajectory_gap(comp)
