"""Tests of dsv3_edu.evaluate: bits per byte, MTP draft acceptance, Python-likeness of text."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import TOY_MODEL

from dsv3_edu.config import ModelConfig
from dsv3_edu.data import IGNORE_INDEX, TokenDataset
from dsv3_edu.evaluate import (
    bits_per_byte,
    evaluate_bits_per_byte,
    format_bits_per_byte,
    mtp_acceptance,
    pooled_python_likeness,
    python_likeness,
    sample_python_likeness,
    top_level_statements,
)
from dsv3_edu.model import Transformer

# ---------------------------------------------------------------------------------------------- bits/byte


def test_bits_per_byte_hand_computed():
    # 3 tokens at loss ln(4) nats each = 2 bits each = 6 bits, spread over 4 bytes: 1.5 bits/byte
    assert bits_per_byte(3 * math.log(4), 4) == pytest.approx(1.5)
    assert bits_per_byte(0.0, 10) == 0.0
    with pytest.raises(ValueError, match="n_bytes"):
        bits_per_byte(1.0, 0)


class Uniform(torch.nn.Module):
    """A 'model' whose every prediction is uniform over V ids: loss ln V nats = log2 V bits per token."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return SimpleNamespace(logits=torch.zeros(*x.shape, self.vocab) + self.w)


def test_evaluate_bits_per_byte_uniform_model_by_hand():
    # vocab 16 (4 bits per token); ids 0 = eos (0 bytes), 1 = pad, 2..15 stand for 1, 2 or 3 bytes
    token_bytes = [0, 0] + [1 + i % 3 for i in range(14)]
    val = torch.tensor([5, 6, 7, 0, 9, 10, 11, 12, 0], dtype=torch.int32)   # two documents
    ds = TokenDataset(val, val, token_bytes=token_bytes, val_bytes=sum(token_bytes[i] for i in val.tolist()),
                      compressors={"xz": 1.7, "bz2": 1.8, "zlib": 2.0}, eos_id=0, pad_id=1)
    r = evaluate_bits_per_byte(Uniform(16), ds, batch_size=2, seq_len=4)
    # bytes of ids 5 6 7 | 9 10 11 12 by the table: 1 2 3 | 2 3 1 2 = 14; eos 0
    assert r["tokens"] == 9 and r["bytes"] == ds.val_bytes == 14
    assert r["bits_per_byte"] == pytest.approx(9 * 4 / 14)           # 9 targets x 4 bits / 14 bytes
    assert r["loss"] == pytest.approx(math.log(16)) and r["xz"] == 1.7
    part = evaluate_bits_per_byte(Uniform(16), ds, batch_size=1, seq_len=4, max_batches=1)
    # only the first window scored: targets 5 6 7 eos -> 4 tokens, bytes of exactly those targets
    assert part["tokens"] == 4 and part["bytes"] == 1 + 2 + 3
    assert part["bits_per_byte"] == pytest.approx(4 * 4 / 6)
    want = "validation 1.234 bits/byte (xz 1.700, bz2 1.800, zlib 2.000)"
    assert format_bits_per_byte(1.2345, ds.compressors) == want


# ---------------------------------------------------------------------------------------------- MTP


def test_mtp_acceptance_hand_made_logits():
    V = 5

    def onehot(ids):                                                  # (T,) -> (1, T, V) logits
        return torch.nn.functional.one_hot(torch.tensor([ids]), V).float()

    main = [1, 2, 3, 4, 0]          # main argmax at positions 0..4; positions 1..4 are compared
    draft = [2, 0, 4, 1]            # MTP argmax at positions 0..3 (guess for t_{i+2})

    class Fake:
        cfg, training = SimpleNamespace(n_mtp=1), False

        def eval(self):
            pass

        def train(self, mode=True):
            pass

        def __call__(self, x, with_mtp):
            return SimpleNamespace(logits=onehot(main), mtp_logits=[onehot(draft)])

    fake = Fake()
    y = torch.tensor([[9, 2, 3, 4, IGNORE_INDEX]])                   # truth t_{i+1}; the last target is padding
    r = mtp_acceptance(fake, [(torch.zeros(1, 5, dtype=torch.long), y)])
    # positions i = 0..3: draft[i] vs main[i+1] = 2,3,4,0 -> agree at i = 0, 2; i = 3 is padding (y[4] ignored)
    assert r["positions"] == 3 and r["acceptance"] == pytest.approx(2 / 3)
    assert r["mtp_accuracy"] == pytest.approx(2 / 3)                 # draft == truth y[i+1] = 2,3,4: i = 0, 2
    assert r["main_accuracy"] == pytest.approx(1.0)                  # main[i+1] == y[i+1] at i = 0, 1, 2


def test_mtp_acceptance_tiny_model_matches_the_decoding_path():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**{**TOY_MODEL, "n_mtp": 1})).eval()
    x = torch.randint(0, 64, (3, 12))
    y = torch.cat([x[:, 1:], torch.randint(0, 64, (3, 1))], dim=1)
    r = mtp_acceptance(model, [(x, y)])
    # the same drafts through mtp_step, the incremental path speculative decoding uses
    with torch.no_grad():
        out = model(x)
        draft = model.mtp_step(out.hidden[:, :-1], x[:, 1:], 0, None, attn_mode="naive")[0].argmax(-1)
        main = out.logits[:, 1:].argmax(-1)
    assert r["positions"] == 3 * 11
    assert r["acceptance"] == pytest.approx(float((draft == main).float().mean()))
    with pytest.raises(ValueError, match="no MTP module"):
        mtp_acceptance(Transformer(ModelConfig(**{**TOY_MODEL, "n_mtp": 0})), [(x, y)])


# ---------------------------------------------------------------------------------------------- Python-likeness

GOOD = '''import os


@decorator
def f(x):
    if x:
        return 1
    else:
        return (2 +
            3)


class A:
    pass
try:
    f(1)
except ValueError:
    pass
x = 1
'''


def test_top_level_statements_split():
    blocks = top_level_statements(GOOD)
    assert [b.split("\n")[0] for b in blocks] == ["import os", "@decorator", "class A:", "try:", "x = 1"]


def test_python_likeness_of_hand_made_texts():
    assert python_likeness(GOOD, drop_last=False) == {"share": 1.0, "parsed": 5, "statements": 5}
    assert python_likeness(GOOD)["statements"] == 4                  # the last block is left out
    bad = "def f(:\n    pass\nx = = 2\nprint('ok')\nimport\n# a comment\nlast = 1\n"
    # blocks: def f(: (bad), x = = 2 (bad), print('ok') (ok), import (bad), last = 1 (dropped: last)
    assert python_likeness(bad) == {"share": 0.25, "parsed": 1, "statements": 4}
    assert python_likeness("")["share"] == 0.0
    # a column-0 line inside a string starts a block that is incomplete: joined until the statement compiles
    doc = 'x = """\ncolumn-0 text\n"""\ny = 2\nz = 3\n'
    assert python_likeness(doc) == {"share": 1.0, "parsed": 2, "statements": 2}
    # an unfinished statement at the end is never counted as parsed
    assert python_likeness("x = 1\ny = f(\n", drop_last=False) == {"share": 0.5, "parsed": 1, "statements": 2}
    pooled = pooled_python_likeness([GOOD, bad])
    assert pooled == {"share": 5 / 8, "parsed": 5, "statements": 8}
    # a sample with no whole statement (noise on one line, cut at the budget) is one failed statement, not 0 of 0
    assert python_likeness("def  GetJoin dis bz zz(( x") == {"share": 0.0, "parsed": 0, "statements": 1}
    # the prompt's own statement is not the model's: "import os\n" + noise scores 0, not 1 of 1
    noisy = "import os\nfoo bar baz\nqux"
    assert python_likeness(noisy) == {"share": 0.5, "parsed": 1, "statements": 2}
    assert python_likeness(noisy, skip=len("import os\n")) == {"share": 0.0, "parsed": 0, "statements": 1}
    assert pooled_python_likeness([noisy, GOOD], skips=[10, 0]) == {"share": 4 / 5, "parsed": 4, "statements": 5}


def test_python_likeness_interval_and_distinct_lines_by_hand():
    from dsv3_edu.evaluate import distinct_line_share, python_likeness_interval
    # every text scores the same share: every resample does too
    assert python_likeness_interval([GOOD, GOOD, GOOD]) == [1.0, 1.0]
    bad = "x = = 1\ny = = 2\nz = 3\n"                  # 0 of 2 (the last block is left out)
    lo, hi = python_likeness_interval([GOOD] * 10 + [bad] * 10)
    assert 0.0 < lo < pooled_python_likeness([GOOD] * 10 + [bad] * 10)["share"] < hi < 1.0
    assert python_likeness_interval([GOOD, bad], n=500, seed=1) == python_likeness_interval([GOOD, bad], n=500, seed=1)
    # 5 non-blank lines, 3 distinct in the first text; 2 of 2 in the second
    assert distinct_line_share(["x = 1\nx = 1\n\n  x = 1\ny = 2\nz = 3", "a\nb"]) == 5 / 7
    assert distinct_line_share([]) == 0.0
    # unique: a loop of one valid line counts once; a repeated failure too
    loop = "x = 1\n" * 20 + "y = = 2\n" + "y = = 2\n" + "z = 3\n"
    assert python_likeness(loop) == {"share": 20 / 22, "parsed": 20, "statements": 22}
    assert python_likeness(loop, unique=True) == {"share": 0.5, "parsed": 1, "statements": 2}
    assert pooled_python_likeness([loop, GOOD], unique=True) == {"share": 5 / 6, "parsed": 5, "statements": 6}
    assert python_likeness_interval([loop] * 3, unique=True) == [0.5, 0.5]


def test_sample_python_likeness_runs_with_fixed_seeds():
    from dsv3_edu.data import load_tokenizer
    tok = load_tokenizer()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**{**TOY_MODEL, "vocab_size": tok.vocab_size})).eval()
    a = sample_python_likeness(model, tok, prompts=("import os\n",), seeds=(0,), max_new_tokens=16)
    b = sample_python_likeness(model, tok, prompts=("import os\n",), seeds=(0,), max_new_tokens=16)
    assert a["samples"] == b["samples"] and a["samples"][0].startswith("import os\n")
    assert 0.0 <= a["share"] <= 1.0
    with pytest.raises(ValueError, match="temperature"):
        sample_python_likeness(model, tok, temperature=1.0)
