"""Bad input to every command: one line naming the thing, a non-zero exit, no traceback, nothing overwritten.

The commands run in-process (``main([...])``), so these tests stay fast; stderr is captured.
"""
import json

import pytest
import torch
from conftest import TOY_MODEL
from safetensors.torch import save_file

from dsv3_edu.__main__ import main as cli
from dsv3_edu.accounting import main as accounting_cli
from dsv3_edu.config import PRESETS, ModelConfig, parse_field, parse_sets
from dsv3_edu.data.__main__ import main as data_cli
from dsv3_edu.model import Transformer


def one_line_error(capsys, *must_contain: str) -> str:
    """The captured stderr is a single line that names each of ``must_contain``, and no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, f"expected one line, got:\n{err}"
    for s in must_contain:
        assert s in err, f"{s!r} not in {err!r}"
    return err


def exits_with_error(capsys, fn, argv, *must_contain: str) -> str:
    """fn(argv) returns non-zero or exits non-zero (argparse), with one line on stderr."""
    try:
        rc = fn(argv)
    except SystemExit as e:
        rc = e.code
    assert rc not in (0, None), f"{argv} exited 0"
    return one_line_error(capsys, *must_contain)


# ------------------------------------------------------------------------------------------- --set parsing
def test_set_parses_by_field_type():
    assert parse_sets(["n_mtp=0", "balance=aux_loss", "fp8=true", "rope_factor=40", "scale_fmt=none"]) == \
        {"n_mtp": 0, "balance": "aux_loss", "fp8": True, "rope_factor": 40.0, "scale_fmt": None}
    assert parse_sets(["balance=\"aux_loss\"", "score_func='softmax'"]) == {"balance": "aux_loss",
                                                                            "score_func": "softmax"}
    assert PRESETS["nano"].replace(**parse_sets(["n_mtp=0", "balance=aux_loss"])).balance == "aux_loss"


@pytest.mark.parametrize("item, words", [
    ("score_func=flat", ["score_func", "'sigmoid', 'softmax'"]),
    ("balance=aux", ["balance", "'aux_free', 'aux_loss', 'none'"]),
    ("n_mtp=one", ["n_mtp", "integer"]),
    ("fp8=maybe", ["fp8", "true or false"]),
    ("n_expert=4", ["unknown model field 'n_expert'", "n_routed_experts"]),
    ("n_mtp", ["FIELD=VALUE"]),
])
def test_set_bad_field_or_value_is_one_line(capsys, tmp_path, item, words):
    out = tmp_path / "run"
    exits_with_error(capsys, cli, ["train", "--preset", "nano", "--out-dir", str(out), "--set", item], *words)
    assert not out.exists()


def test_set_value_out_of_range_names_the_field(capsys, tmp_path):
    exits_with_error(capsys, cli, ["train", "--preset", "nano", "--out-dir", str(tmp_path / "r"), "--set",
                                   "n_activated_experts=99"], "n_activated_experts")
    with pytest.raises(ValueError, match="rope_factor must be a number"):
        parse_field("rope_factor", "big")


# ------------------------------------------------------------------------------------------- train
def test_train_missing_config_file(capsys, tmp_path):
    exits_with_error(capsys, cli, ["train", "--preset", str(tmp_path / "nope.json"), "--out-dir",
                                   str(tmp_path / "r")], "nope.json", "not found")
    assert not (tmp_path / "r").exists()


def test_train_unknown_preset(capsys, tmp_path):
    exits_with_error(capsys, cli, ["train", "--preset", "gigantic", "--out-dir", str(tmp_path / "r")],
                     "gigantic", "presets")


@pytest.mark.parametrize("content, words", [
    ({**PRESETS["nano"].to_dict(), "n_expertz": 4}, ["n_expertz", "c.json"]),     # unknown key
    ({**PRESETS["nano"].to_dict(), "rope_theta": float("nan")}, ["rope_theta", "finite"]),   # a NaN in the data
    ({**PRESETS["nano"].to_dict(), "dim": "128"}, ["dim", "integer"]),
    ("{not json", ["c.json", "not valid JSON"]),
    ([1, 2], ["c.json", "JSON object"]),
])
def test_train_bad_config_json(capsys, tmp_path, content, words):
    cfg = tmp_path / "c.json"
    cfg.write_text(content if isinstance(content, str) else json.dumps(content))
    exits_with_error(capsys, cli, ["train", "--preset", str(cfg), "--out-dir", str(tmp_path / "r")], *words)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag", ["--lr", "--min-lr-ratio", "--weight-decay", "--grad-clip", "--beta2"])
def test_train_nan_number(capsys, tmp_path, flag):
    exits_with_error(capsys, cli, ["train", "--preset", "nano", flag, "nan", "--out-dir", str(tmp_path / "r")],
                     flag, "finite")
    assert not (tmp_path / "r").exists()


def test_train_missing_resume_folder(capsys, tmp_path):
    exits_with_error(capsys, cli, ["train", "--resume", str(tmp_path / "gone")], "gone")


def test_train_bad_argument_is_one_line(capsys):
    exits_with_error(capsys, cli, ["train", "--steps", "many"], "--steps", "many")


# ------------------------------------------------------------------------------------------- generate
def _write_ckpt(d, cfg):
    """A checkpoint folder in the trainer's format: model.safetensors + config.json."""
    d.mkdir(parents=True)
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in Transformer(cfg).state_dict().items()}, str(d / "model.safetensors"))
    cfg.save(d / "config.json")
    return d


@pytest.fixture
def toy_ckpt(tmp_path):
    """A toy model with the default tokenizer's vocabulary (8192)."""
    return _write_ckpt(tmp_path / "run" / "checkpoint", ModelConfig(**{**TOY_MODEL, "vocab_size": 8192}))


def test_generate_tokenizer_larger_than_the_model(capsys, tmp_path):
    ckpt = _write_ckpt(tmp_path / "small_vocab", ModelConfig(**TOY_MODEL))          # vocab 64
    exits_with_error(capsys, cli, ["generate", "--ckpt", str(ckpt)], "8192", "64", "--tokenizer")


def test_generate_missing_checkpoint(capsys, tmp_path):
    exits_with_error(capsys, cli, ["generate", "--ckpt", str(tmp_path / "nothing")], "nothing")


def test_generate_bad_tokenizer(capsys, toy_ckpt, tmp_path):
    exits_with_error(capsys, cli, ["generate", "--ckpt", str(toy_ckpt), "--tokenizer", str(tmp_path / "t.json")],
                     "--tokenizer", "t.json")
    bad = tmp_path / "bad.json"
    bad.write_text("not a tokenizer")
    exits_with_error(capsys, cli, ["generate", "--ckpt", str(toy_ckpt), "--tokenizer", str(bad)],
                     "--tokenizer", "bad.json")


@pytest.mark.parametrize("args, words", [
    (["--temperature", "nan"], ["--temperature", "finite"]),
    (["--top-p", "nan"], ["--top-p", "finite"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens"]),
    (["--top-p", "2"], ["top_p"]),
])
def test_generate_bad_numbers(capsys, toy_ckpt, args, words):
    exits_with_error(capsys, cli, ["generate", "--ckpt", str(toy_ckpt), *args], *words)


# ------------------------------------------------------------------------------------------- accounting
def test_accounting_bad_config(capsys, tmp_path):
    exits_with_error(capsys, accounting_cli, ["--config", str(tmp_path / "missing.json")], "missing.json")
    p = tmp_path / "c.json"
    p.write_text(json.dumps({**PRESETS["tiny"].to_dict(), "routed_experts": 4}))
    exits_with_error(capsys, accounting_cli, ["--config", str(p)], "routed_experts", "c.json")
    p.write_text('{"dim": NaN}')
    exits_with_error(capsys, accounting_cli, ["--config", str(p)], "dim")
    exits_with_error(capsys, accounting_cli, ["--preset", "tiny", "--config", str(p)], "not allowed")
    exits_with_error(capsys, cli, ["accounting", "--config", str(tmp_path / "missing.json")], "missing.json")


# ------------------------------------------------------------------------------------------- data
@pytest.fixture
def text_dir(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    for i in range(6):
        (d / f"f{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 20)
    return d


@pytest.mark.parametrize("args, words", [
    (["--source", "/nonexistent/src"], ["/nonexistent/src"]),
    (["--tokenizer", "/nonexistent/tok.json"], ["--tokenizer", "/nonexistent/tok.json"]),
    (["--fim-rate", "nan"], ["--fim-rate", "finite"]),
    (["--val-fraction", "nan"], ["--val-fraction", "finite"]),
    (["--val-fraction", "1.5"], ["--val-fraction"]),
    (["--vocab-size", "10", "--train-tokenizer"], ["--vocab-size"]),
])
def test_data_build_bad_input_keeps_the_cache(capsys, tmp_path, text_dir, args, words):
    out = tmp_path / "build"
    assert data_cli(["build", "--source", str(text_dir), "--out", str(out), "--val-fraction", "0.2"]) == 0
    capsys.readouterr()
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    argv = ["build", "--out", str(out), *(["--source", str(text_dir)] if "--source" not in args else []), *args]
    if "--val-fraction" not in args:
        argv += ["--val-fraction", "0.2"]
    exits_with_error(capsys, data_cli, argv, *words)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before      # the cache is intact


def test_data_stats_bad_tokenizer(capsys, tmp_path, text_dir):
    bad = tmp_path / "tok.json"
    bad.write_text("{}")
    exits_with_error(capsys, data_cli, ["stats", "--source", str(text_dir), "--tokenizer", str(bad)],
                     "--tokenizer", "tok.json")
    exits_with_error(capsys, data_cli, ["stats", "--source", str(tmp_path / "none")], "none")
    exits_with_error(capsys, data_cli, ["build", "--fim-rate", "x"], "--fim-rate")


def test_good_input_still_works(capsys, toy_ckpt):
    """The checks above must not refuse good input: generate and accounting through the same entry points."""
    assert cli(["generate", "--ckpt", str(toy_ckpt.parent), "--max-new-tokens", "3", "--top-p", "0.9"]) == 0
    assert capsys.readouterr().out.startswith("def ")                    # the default prompt, continued
    assert cli(["accounting", "--preset", "tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kv_cache_elements_per_token_per_layer"] == 96


# ------------------------------------------------------------------------------------------- checkpoints
def _truncate(f):
    b = f.read_bytes()
    f.write_bytes(b[: len(b) // 2])


def _nan_weight(f):
    from safetensors.torch import load_file
    sd = load_file(str(f))
    sd["norm.weight"][0] = float("nan")
    save_file(sd, str(f))


def _other_config(f):
    ModelConfig(**{**TOY_MODEL, "vocab_size": 8192, "dim": 64}).save(f.parent / "config.json")


def _unknown_key(f):
    c = f.parent / "config.json"
    c.write_text(json.dumps({**json.loads(c.read_text()), "n_expertz": 3}))


@pytest.mark.parametrize("damage, words", [
    (_truncate, ["model.safetensors", "corrupt or truncated"]),
    (lambda f: f.write_bytes(b"not safetensors"), ["model.safetensors", "corrupt or truncated"]),
    (_other_config, ["model.safetensors", "does not fit its config.json", "wrong shape"]),
    (_nan_weight, ["model.safetensors", "NaN", "norm.weight"]),
    (_unknown_key, ["config.json", "n_expertz"]),
])
def test_generate_bad_checkpoint(capsys, toy_ckpt, damage, words):
    damage(toy_ckpt / "model.safetensors")
    exits_with_error(capsys, cli, ["generate", "--ckpt", str(toy_ckpt)], *words)


@pytest.fixture
def run_dir(tmp_path, dataset):
    """A 2-step toy run with a full checkpoint (weights, configs, train_state.pt)."""
    from dsv3_edu.train import TrainConfig, train
    tc = TrainConfig(steps=2, batch_size=2, seq_len=16, warmup_steps=1, eval_batches=1, log_every=1, save_every=2,
                     out_dir=str(tmp_path / "run"), plots=False)
    train(tc, dataset=dataset, progress=False, model_cfg=ModelConfig(**TOY_MODEL))
    return tmp_path / "run"


@pytest.mark.parametrize("name, damage, words", [
    ("model.safetensors", _truncate, ["model.safetensors", "corrupt or truncated"]),
    ("train_state.pt", _truncate, ["train_state.pt", "corrupt"]),
    ("train_config.json", lambda f: f.write_text("{oops"), ["train_config.json", "corrupt"]),
    ("model.safetensors", _other_config, ["does not fit its config.json"]),
    ("model.safetensors", _unknown_key, ["config.json", "n_expertz"]),
])
def test_resume_bad_checkpoint_one_line_nothing_written(run_dir, dataset, name, damage, words):
    from dsv3_edu.train import TrainConfig, train
    damage(run_dir / "checkpoint" / name)
    before = {f: f.read_bytes() for f in run_dir.rglob("*") if f.is_file()}
    with pytest.raises(ValueError) as e:
        train(TrainConfig(steps=4, out_dir=str(run_dir)), dataset=dataset, progress=False, resume=run_dir)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and all(w in msg for w in words), msg
    assert {f: f.read_bytes() for f in run_dir.rglob("*") if f.is_file()} == before


def test_cli_resume_refuses_a_new_model_config(capsys, run_dir):
    exits_with_error(capsys, cli, ["train", "--resume", str(run_dir), "--set", "n_mtp=0"], "--resume", "--set")
    exits_with_error(capsys, cli, ["train", "--resume", str(run_dir / "checkpoint" / "model.safetensors")],
                     "train_state.pt")
