"""python -m dsv3_edu.check on CPU: the parts that can run here run (small sizes), GPU parts are skipped,
the report follows its schema, and a failing, raising or slow part is reported while the others still run."""
import json
import time

import pytest
import torch

from dsv3_edu import check
from dsv3_edu.check import Settings, markdown, run_check, validate_report


def _tiny_cpu_settings() -> Settings:
    s = Settings.for_device("cpu", quick=True)
    s.train_batch, s.train_seq, s.train_trials, s.train_steps_per_trial = 1, 16, 1, 1
    s.dist_world, s.spec_train_steps, s.spec_new_tokens, s.spec_batch = 1, 4, 6, 2
    s.kernel_test_filter = "cast_trap or act_quant_triton_bit_exact"   # two of the interpreter kernel tests
    return s


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU behaviour of the check")
def test_check_runs_on_cpu_and_skips_gpu_parts():
    parts = ["env", "kernels", "gemm", "train", "ep", "pipeline", "ddp", "speculative"]
    report = run_check(parts, quick=True, progress=False, settings=_tiny_cpu_settings())
    validate_report(report)
    p = report["parts"]
    assert list(p) == parts and report["device"] == "cpu"
    assert p["env"]["status"] == "ok" and p["env"]["metrics"]["torch"] == torch.__version__
    assert p["gemm"]["status"] == "skipped" and "GPU" in p["gemm"]["note"]
    # the interpreter ran the selected kernel tests, all passing; special values are compared and counted
    k = p["kernels"]["metrics"]
    assert k["mode"].startswith("interpreter") and k["kernel_tests_passed"] == 3 and k["kernel_tests_mismatch"] == 0
    assert set(k["special_values_differing_elements"]) >= {"nan_e4m3", "pos_inf_e5m2", "neg_zero_e4m3"}
    assert p["kernels"]["status"] == ("failed" if k["special_values_mismatch"] else "ok")
    # training ran both models on the same batch: same first loss, positive throughput, counted FLOPs
    t = p["train"]["metrics"]
    assert p["train"]["status"] == "ok" and t["first_loss"] == pytest.approx(t["hf_first_loss"], abs=1e-3)
    assert t["tokens_per_s"] > 0 and t["hf_tokens_per_s"] > 0 and t["flops_per_token_counted"] > 0
    # distributed parts on gloo match the single process
    for name in ("ep", "pipeline"):
        assert p[name]["status"] == "ok", p[name]
        assert p[name]["metrics"]["backend"] == "gloo" and p[name]["metrics"]["world_size"] == 1
        assert all(g["met"] for g in p[name]["goals"])
    d = p["ddp"]
    assert d["status"] == "ok" and d["metrics"]["world_size"] == 1 and d["metrics"]["same_biases_on_all_ranks"]
    sp = p["speculative"]
    assert sp["status"] == "ok" and sp["metrics"]["identical_to_greedy"] is True and sp["metrics"]["speedup"] > 0
    table = markdown(report)
    assert "| gemm | skipped |" in table and "| goal | value | target | met |" in table


def _ok(s, res, ctx):
    res.metrics["answer"] = 42
    res.goals.append(check.goal("answer", 42, 40))


def _boom(s, res, ctx):
    raise RuntimeError("kaboom in part")


def _wrong(s, res, ctx):
    res.metrics["values_mismatch"] = True


def _slow(s, res, ctx):
    time.sleep(5)


def _gpu_only(s, res, ctx):
    check._need_cuda(s, "a test")


def test_failures_are_reported_and_the_rest_still_runs(tmp_path):
    s = Settings.for_device("cpu", quick=True)
    s.budgets = {"slow": 0.5}
    fns = {"boom": _boom, "ok": _ok, "wrong": _wrong, "slow": _slow, "gpu": _gpu_only, "after": _ok}
    t0 = time.perf_counter()
    report = run_check(device="cpu", progress=False, part_fns=fns, settings=s)
    assert time.perf_counter() - t0 < 4          # the slow part was cut at its budget
    st = {k: v["status"] for k, v in report["parts"].items()}
    assert st == {"boom": "error", "ok": "ok", "wrong": "failed", "slow": "timeout", "gpu": "skipped", "after": "ok"}
    assert "kaboom in part" in report["parts"]["boom"]["error"]
    assert "budget" in report["parts"]["slow"]["error"]
    assert "values_mismatch" in report["parts"]["wrong"]["note"]
    sm = report["summary"]
    assert (sm["ok"], sm["failed"], sm["error"], sm["timeout"], sm["skipped"]) == (2, 1, 1, 1, 1)
    assert sm["all_ran_ok"] is False and (sm["goals_met"], sm["goals"]) == (2, 2)
    assert "kaboom in part" in markdown(report)
    validate_report(json.loads(json.dumps(report)))


def test_validate_report_names_the_problem():
    report = run_check(device="cpu", progress=False, part_fns={"ok": _ok}, settings=Settings.for_device("cpu"))
    bad = json.loads(json.dumps(report))
    bad["parts"]["ok"]["status"] = "fine"
    with pytest.raises(ValueError, match="status 'fine'"):
        validate_report(bad)
    del report["summary"]
    with pytest.raises(ValueError, match="'summary'"):
        validate_report(report)


def test_cli_writes_json_and_rejects_unknown_parts(tmp_path, capsys):
    out = tmp_path / "check.json"
    rc = check.main(["--parts", "env", "gemm", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    validate_report(report)
    assert report["parts"]["gemm"]["status"] == "skipped"
    assert "| env | ok |" in capsys.readouterr().out
    assert check.main(["--parts", "nope"]) == 2
    assert "unknown part" in capsys.readouterr().err


def test_total_time_budget_skips_what_is_left():
    report = run_check(device="cpu", progress=False, part_fns={"a": _ok, "b": _ok},
                       settings=Settings.for_device("cpu"), max_minutes=0.05)   # 3 s: less than a part's minimum
    assert [p["status"] for p in report["parts"].values()] == ["skipped", "skipped"]
    assert "total time budget" in report["parts"]["a"]["note"]


@pytest.mark.skipif(not hasattr(torch.ops.aten, "_grouped_mm"), reason="this torch has no grouped_mm")
def test_grouped_mm_flops_counted_forward_and_backward():
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.randn(10, 8, requires_grad=True)                   # 10 rows, in 8
    w = torch.randn(3, 4, 8, requires_grad=True)                 # 3 experts, out 4
    offs = torch.tensor([3, 7, 10], dtype=torch.int32)
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten._grouped_mm: check.grouped_mm_flops}) as fc:
        y = torch.nn.functional.grouped_mm(x, w.transpose(1, 2), offs=offs)
        y.pow(2).sum().backward()
    assert fc.get_total_flops() == 3 * (2 * 10 * 8 * 4)           # forward, dX, dW: one dense GEMM's worth each
