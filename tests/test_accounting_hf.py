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


@pytest.mark.parametrize("balance", ["none", "aux_loss"])
def test_hf_export_of_a_gate_that_ignores_its_bias_is_exact(tmp_path, balance):
    """balance 'none' / 'aux_loss' choose experts without the bias; transformers always adds it: the export
    writes a zero bias, so a stale non-zero bias buffer cannot change the routing (it did: logits off by 1.4)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ours = Transformer(parity_cfg().replace(balance=balance, n_mtp=0)).eval()
    for layer in ours.layers[1:]:
        layer.ffn.gate.bias.normal_(0, 0.5)    # large enough to change the choice if it were used
    save_hf(ours, tmp_path / "ours")
    theirs = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    x = torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        assert (ours(x).logits - theirs(x).logits).abs().max().item() < 1e-4
        with_bias = ours.cfg.replace(balance="aux_free")   # the same weights routed with the bias differ
        ours_biased = Transformer(with_bias).eval()
        ours_biased.load_state_dict(ours.state_dict())
        assert (ours_biased(x).logits - theirs(x).logits).abs().max().item() > 1e-3


def _yarn_hf_config(**rope) -> dict:
    d = to_hf_config(parity_cfg(max_seq_len=8192))
    d["rope_parameters"].update(rope)
    return d


def test_load_hf_yarn_mscale_refused_unless_exact():
    from dsv3_edu.hf import from_hf_config
    assert from_hf_config(_yarn_hf_config(mscale=0.707, mscale_all_dim=0.707)).mscale == 0.707
    with pytest.raises(ValueError, match="mscale_all_dim"):
        from_hf_config(_yarn_hf_config(mscale=1.0, mscale_all_dim=0.707))
    with pytest.raises(ValueError, match="attention_factor"):   # no mscale_all_dim: transformers scales RoPE only
        d = _yarn_hf_config()
        del d["rope_parameters"]["mscale_all_dim"]
        from_hf_config(d)


def test_load_hf_yarn_unequal_mscale_would_differ(tmp_path):
    """Why the refusal: transformers with mscale != mscale_all_dim gives other logits than one mscale."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ours = Transformer(parity_cfg(max_seq_len=8192).replace(n_mtp=0)).eval()
    save_hf(ours, tmp_path / "m")
    cfg_file = tmp_path / "m" / "config.json"
    d = json.loads(cfg_file.read_text())
    d["rope_parameters"].update(mscale=1.0, mscale_all_dim=0.707)
    cfg_file.write_text(json.dumps(d))
    theirs = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    x = torch.randint(0, 512, (1, 40))
    with torch.no_grad():
        assert (ours(x).logits - theirs(x).logits).abs().max().item() > 1e-3
    with pytest.raises(ValueError, match="mscale"):
        load_hf(tmp_path / "m")


REF_CONFIGS = __import__("pathlib").Path(__file__).parent / "data" / "deepseek_v3_configs"


def test_reference_config_builds_what_the_reference_builds(tmp_path):
    """config_671B.json leaves max_seq_len out: the reference's ModelArgs default 4096 * 4 applies, so YaRN is on."""
    from dsv3_edu.model import yarn_mscale
    cfg = ModelConfig.load(REF_CONFIGS / "config_671B.json")
    assert cfg.max_seq_len == 16384 and cfg.original_seq_len == 4096 and cfg.max_seq_len > cfg.original_seq_len
    assert cfg == PRESETS["deepseek-v3"]                  # the preset = the reference config + MTP D=1 (report)
    assert cfg.scale_fmt is None and cfg.fp8 is False     # dtype "fp8" is the reference's weight storage
    with torch.device("meta"):
        attn = Transformer(cfg.replace(n_layers=1, n_dense_layers=1, n_mtp=0)).layers[0].attn
    assert attn.softmax_scale == pytest.approx((128 + 64) ** -0.5 * yarn_mscale(40.0, 1.0) ** 2)
    # round trip: our JSON of it loads back equal
    cfg.save(tmp_path / "ours.json")
    assert ModelConfig.load(tmp_path / "ours.json") == cfg
    # later configs: scale_fmt "ue8m0" is kept, not dropped
    v31 = ModelConfig.load(REF_CONFIGS / "config_v3.1.json")
    assert v31.scale_fmt == "ue8m0" and v31.replace(scale_fmt=None) == cfg
    assert ModelConfig.load(tmp_path / "ours.json").replace(scale_fmt="ue8m0") == v31
    # config_16B (no dtype key): the absent keys take ModelArgs defaults (softmax routing, 1 group, mscale 0.707)
    c16 = ModelConfig.load(REF_CONFIGS / "config_16B.json")
    assert (c16.score_func, c16.n_expert_groups, c16.n_limited_groups, c16.mscale, c16.max_seq_len) == \
        ("softmax", 1, 1, 0.707, 16384)


def test_reference_config_unknown_key_is_named(tmp_path):
    d = json.loads((REF_CONFIGS / "config_671B.json").read_text())
    p = tmp_path / "ref.json"
    p.write_text(json.dumps({**d, "n_dense_layer": 3}))   # a typo: not a reference key, so read as ours
    with pytest.raises(ValueError, match="n_dense_layer"):
        ModelConfig.load(p)
    p.write_text(json.dumps({**d, "scale_fmt": "e5m2"}))
    with pytest.raises(ValueError, match="scale_fmt.*ue8m0"):
        ModelConfig.load(p)
