"""The 671B numbers from the same code, and logits parity with transformers' DeepseekV3ForCausalLM."""
import json

import pytest
import torch
from conftest import small_config

from dsv3_edu.accounting import kv_cache_bytes_per_token, report
from dsv3_edu.accounting import main as accounting_main
from dsv3_edu.config import PRESETS, ModelConfig
from dsv3_edu.hf import load_hf, save_hf, to_hf_config
from dsv3_edu.model import Transformer


def test_deepseek_v3_accounting_matches_report():
    r = report(PRESETS["deepseek-v3"])
    assert 670e9 < r["total_params"] < 672e9            # "671B"
    assert 37e9 < r["activated_params"] < 38e9          # "37B activated"
    assert 684e9 < r["total_with_mtp_on_disk"] < 686e9  # "685B on disk"
    assert 13e9 < r["mtp_params_on_disk"] < 15e9        # "14B MTP module"
    assert r["kv_cache_bytes_per_token"] == 70_272
    assert r["kv_cache_elements_per_token_per_layer"] == 576
    assert r["mha_kv_cache_bytes_per_token"] == 2 * 128 * 128 * 61 * 2
    assert r["mqa_kv_cache_bytes_per_token"] == 2 * 128 * 61 * 2


def test_accounting_cli_json(capsys, tmp_path):
    assert accounting_main(["--preset", "deepseek-v3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kv_cache_bytes_per_token"] == 70_272
    cfg_path = tmp_path / "c.json"
    PRESETS["tiny"].save(cfg_path)
    assert accounting_main(["--config", str(cfg_path), "--json"]) == 0
    tiny = json.loads(capsys.readouterr().out)
    assert tiny["total_params"] == Transformer(PRESETS["tiny"]).num_params(include_mtp=False)
    assert accounting_main(["--preset", "nope"]) == 2


def test_kv_cache_kinds_error():
    with pytest.raises(ValueError, match="kind"):
        kv_cache_bytes_per_token(PRESETS["tiny"], "gqa-ish")


def parity_cfg(max_seq_len=64) -> ModelConfig:
    # every feature the HF model has: q compression, group-limited sigmoid routing, shared experts, dense layers;
    # a larger init so that the logits are not trivially small
    return small_config(vocab_size=512, max_seq_len=max_seq_len, init_std=0.1)


@pytest.mark.parametrize("max_seq_len", [64, 8192])  # 8192 > 4096 switches YaRN on
def test_logits_match_transformers_both_directions(tmp_path, max_seq_len):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ours = Transformer(parity_cfg(max_seq_len)).eval()
    for layer in list(ours.layers[1:]) + [ours.mtp[0].block]:
        layer.ffn.gate.bias.normal_(0, 0.05)   # a non-zero selection bias must route the same way
    save_hf(ours, tmp_path / "ours")
    theirs = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    x = torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        a, b = ours(x).logits, theirs(x).logits
    assert (a - b).abs().max().item() < 1e-4
    assert a.abs().max().item() > 0.5  # logits are not trivially small
    # reverse: a model saved by transformers loads into ours with the same logits
    theirs.save_pretrained(tmp_path / "theirs")
    back = load_hf(tmp_path / "theirs")
    with torch.no_grad():
        assert (back(x).logits - b).abs().max().item() < 1e-4
    # our own export round-trips the MTP module exactly
    again = load_hf(tmp_path / "ours")
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_hf_export_refuses_what_hf_cannot_express():
    with pytest.raises(ValueError, match="sigmoid"):
        to_hf_config(parity_cfg().replace(score_func="softmax"))
    with pytest.raises(FileNotFoundError):
        load_hf("/nonexistent/dir")
