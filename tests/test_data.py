"""Tests of dsv3_edu.data: corpus, tokenizer, FIM, packing, batches, build_dataset, CLI."""
from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

from dsv3_edu.data import (
    DEFAULT_TOKENIZER_PATH,
    EOS,
    FIM_BEGIN,
    FIM_END,
    FIM_HOLE,
    IGNORE_INDEX,
    SPECIAL_TOKENS,
    EvalBatches,
    SequentialBatches,
    TokenDataset,
    apply_fim,
    build_dataset,
    default_corpus,
    encode_documents,
    fim_split,
    get_batch,
    load_documents,
    load_tokenizer,
    pack_best_fit,
    pack_documents,
    packing_stats,
    psm_text,
    save_tokenizer,
    split_documents,
    stdlib_files,
    token_stats,
    train_tokenizer,
)
from dsv3_edu.data.__main__ import main as cli_main
from dsv3_edu.data.corpus import (
    Document,
    atomic_write_text,
    content_sha256,
    drop_reason,
    is_literal_line,
    literal_line_share,
    select_files,
)
from dsv3_edu.data.packing import best_fit_decreasing, chunk_document, document_spans
from dsv3_edu.data.tokenizer import PACKAGED_VOCAB_SIZES, packaged_tokenizer_path

UNICODE_TEXT = "héllo wörld — naïve café, 日本語のテキスト, emoji 😀🚀, Ελληνικά, русский\n"
CODE_TEXT = 'def f(x: int) -> int:\r\n\treturn x ** 2  # square\n\nclass A:\n    """doc"""\n    pass\n'


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture()
def text_dir(tmp_path):
    """A small folder corpus of 20 documents (code and prose)."""
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "déjà", "vu", "naïve", "λ", "def", "return", "(x)", "\n"]
    for i in range(20):
        text = f"# document {i}\n" + " ".join(rng.choice(words) for _ in range(200 + 10 * i)) + "\n"
        (d / ("sub" if i % 2 else "") / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    return d


# ---------------------------------------------------------------------------------------------- corpus


def test_default_corpus_is_deterministic_and_capped():
    a, b = default_corpus(max_bytes=300_000), default_corpus(max_bytes=300_000)
    assert [d.name for d in a] == [d.name for d in b]
    assert a.sha256() == b.sha256() and len(a.sha256()) == 64
    assert 0 < a.n_bytes <= 300_000
    names = [d.name for d in a]
    assert names == sorted(names)
    assert all(n.endswith(".py") for n in names)
    m = a.manifest()
    assert m["files"] == len(a) and m["bytes"] == a.n_bytes and m["sha256"] == a.sha256()
    assert m["python"].count(".") == 2 and "sha256(relative path)" in m["rule"]


def test_stdlib_files_keep_tests_skip_site_packages(tmp_path):
    for rel in ["os.py", "json/__init__.py", "test/test_os.py", "json/tests/t.py", "site-packages/x/y.py",
                "config-3.11-x86_64/m.py", "_sysconfigdata__linux.py", "__pycache__/os.py", "README.txt",
                "test/badsyntax_x.py", "pydoc_data/topics.py"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x = 1\n")
    got = [p.relative_to(tmp_path).as_posix() for p in stdlib_files(tmp_path)]
    assert got == ["_sysconfigdata__linux.py", "json/__init__.py", "json/tests/t.py", "os.py",
                   "pydoc_data/topics.py", "test/badsyntax_x.py", "test/test_os.py"]
    (tmp_path / "table.py").write_text("T = {\n" + "    0x00e9: 0x0082,  # E WITH ACUTE\n" * 20 + "}\n")
    c = default_corpus(max_bytes=1000, root=tmp_path)
    assert [d.name for d in c] == ["json/__init__.py", "json/tests/t.py", "os.py", "test/test_os.py"]
    m = c.manifest()
    assert m["dropped_files"] == 4 and "table.py" in m["dropped"] and "literals" in m["dropped"]["table.py"]
    assert "pydoc_data/*" in m["dropped"]["pydoc_data/topics.py"] and "badsyntax" in m["rule"]
    assert m["candidates"]["files"] == 8 and m["candidates"]["dropped_bytes"] > 0


@pytest.mark.parametrize("line, literal", [
    ("0x00e9: 0x0082,  # LATIN SMALL LETTER E WITH ACUTE", True),
    ("'assert': 'The \"assert\" statement\\n'", True),
    ("    u'\\x00'  #  0x00 -> NULL", True),
    ("(1, 2.5e-3, -7),", True),
    ("x = 1", False), ("return 'a'", False), ("f(1, 2)", False), (")", False), ("class A:", False),
    ("'a' + name", False),
])
def test_literal_line(line, literal):
    assert is_literal_line(line) is literal


def test_literal_share_separates_tables_from_code():
    table = "decoding_table = (\n" + "    '\\x00'     #  0x00 -> NULL\n" * 50 + ")\n"
    code = CODE_TEXT * 10
    assert literal_line_share(table) > 0.9 and drop_reason("encodings/cp437.py", table) is not None
    # 5 code lines per copy, one of them a docstring (a literal line): 1/5
    assert literal_line_share(code) == pytest.approx(0.2) and drop_reason("mod.py", code) is None
    assert literal_line_share("# only a comment\n\n") == 0.0
    assert drop_reason("pydoc_data/topics.py", code).startswith("path matches")


def test_default_corpus_drops_codec_tables_and_dumps():
    c = default_corpus()  # the real stdlib of this interpreter
    names = {d.name for d in c}
    m = c.manifest()
    for table in ("encodings/cp437.py", "encodings/iso8859_1.py", "encodings/mac_roman.py", "html/entities.py"):
        assert table not in names and "literals" in m["dropped"][table]
    assert not any(n.startswith("pydoc_data/") for n in names)
    assert {"encodings/__init__.py", "encodings/cp932.py", "encodings/idna.py"} <= names  # code kept
    assert any(n.startswith("test/") for n in names)                            # its test suite added
    assert m["dropped"]["pydoc_data/topics.py"].startswith("path matches")
    assert m["bytes"] + m["candidates"]["dropped_bytes"] <= m["candidates"]["bytes"]


def test_select_files_respects_cap_and_is_order_independent():
    names = [f"m{i}.py" for i in range(50)]
    sizes = [100 + 7 * i for i in range(50)]
    keep = select_files(names, sizes, 2000)
    assert sum(sizes[i] for i in keep) <= 2000 and len(keep) > 5
    # the same files in another listing order give the same selection
    perm = list(range(50))
    random.Random(1).shuffle(perm)
    keep2 = select_files([names[i] for i in perm], [sizes[i] for i in perm], 2000)
    assert sorted(names[perm[i]] for i in keep2) == sorted(names[i] for i in keep)


def test_content_hash_sees_names_contents_and_boundaries():
    base = content_sha256([Document("a", "xy"), Document("b", "z")])
    assert base != content_sha256([Document("a", "xy"), Document("b", "Z")])
    assert base != content_sha256([Document("a", "xy"), Document("c", "z")])
    assert base != content_sha256([Document("a", "x"), Document("b", "yz")])
    assert content_sha256([Document("a", "bc")]) != content_sha256([Document("ab", "c")])


def test_load_documents_folder(text_dir):
    c = load_documents(text_dir)
    assert len(c) == 20 and c.skipped == []
    assert c[0].name == "doc00.txt" and c[1].name == "doc02.txt"  # top-level files first, sorted by path
    assert "sub/doc01.txt" in [d.name for d in c]
    assert c[0].text == (text_dir / "doc00.txt").read_text(encoding="utf-8")


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_documents([tmp_path / "nope"])


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no text documents"):
        load_documents(tmp_path / "empty")


def test_binary_and_non_utf8_files_skipped_and_counted(text_dir, capsys):
    (text_dir / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (text_dir / "blob.bin").write_bytes(bytes(range(256)))
    (text_dir / "nul.dat").write_bytes(b"valid utf-8 but binary\x00\x01\x02")
    c = load_documents(text_dir)
    assert len(c) == 20 and len(c.skipped) == 3
    assert sorted(p.rsplit("/", 1)[-1] for p in c.skipped) == ["blob.bin", "latin1.txt", "nul.dat"]
    assert c.manifest()["skipped_files"] == 3
    assert "skipped 3" in capsys.readouterr().out
    with pytest.raises(ValueError, match="blob.bin"):
        load_documents(text_dir, strict=True)
    with pytest.raises(ValueError, match="latin1.txt"):
        load_documents(text_dir / "latin1.txt", strict=True)


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    p = tmp_path / "m.json"
    atomic_write_text(p, "old")
    with pytest.raises(TypeError):
        atomic_write_text(p, 123)  # fails while writing
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["m.json"]  # no temporary file left behind


# ---------------------------------------------------------------------------------------------- tokenizer


def test_packaged_tokenizers(tok):
    assert DEFAULT_TOKENIZER_PATH.is_file() and DEFAULT_TOKENIZER_PATH.stat().st_size < 1_000_000
    assert DEFAULT_TOKENIZER_PATH.parent.parent.name == "data" and "dsv3_edu" in DEFAULT_TOKENIZER_PATH.parts
    assert tok.vocab_size == 8192
    assert sorted(tok.special_ids.values()) == [0, 1, 2, 3, 4]
    for v in PACKAGED_VOCAB_SIZES:
        t = load_tokenizer(packaged_tokenizer_path(v))
        assert t.vocab_size == v and t.special_ids == tok.special_ids


def test_save_and_load_tokenizer_with_a_checkpoint_folder(tok, tmp_path):
    path = save_tokenizer(tok, tmp_path / "ckpt")
    assert path == tmp_path / "ckpt" / "tokenizer.json" and path.is_file()
    back = load_tokenizer(tmp_path / "ckpt")  # a folder: its tokenizer.json
    assert back.sha256() == tok.sha256() and back.encode(CODE_TEXT) == tok.encode(CODE_TEXT)
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        load_tokenizer(tmp_path / "empty_dir_that_does_not_exist")


def test_token_bytes_count_utf8_bytes_exactly(tok):
    tb = tok.token_bytes()
    assert len(tb) == tok.vocab_size and all(tb[i] == 0 for i in tok.special_ids.values())
    for text in (UNICODE_TEXT, CODE_TEXT, "\x00\x7f\ufeff tail"):
        assert sum(tb[i] for i in tok.encode(text)) == len(text.encode("utf-8"))


def test_wheel_ships_the_tokenizers(tmp_path):
    """A non-editable install gets the tokenizers as package data (no silent retraining)."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(root)], capture_output=True, text=True,
                       env={**__import__("os").environ, "PIP_NO_INDEX": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("dsv3_edu-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for v in PACKAGED_VOCAB_SIZES:
        assert f"dsv3_edu/data/tokenizers/bpe-{v}.json" in names


@pytest.mark.parametrize("text", [UNICODE_TEXT, CODE_TEXT, "", " leading space", "\x00\x7f\ufeff tail"])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_are_single_ids(tok):
    for s in SPECIAL_TOKENS:
        ids = tok.encode(s, allow_special=True)
        assert ids == [tok.special_ids[s]]
        assert tok.decode(ids) == s
        # by default a special-token string inside a document is plain text, not a control token
        plain = tok.encode(s)
        assert len(plain) > 1 and tok.special_ids[s] not in plain
        assert tok.decode(plain) == s
    ids = tok.encode(f"a{EOS}b", allow_special=True)
    assert ids.count(tok.eos_id) == 1 and tok.decode(ids, skip_special=True) == "ab"


def test_train_tokenizer_deterministic_and_sized():
    docs = [CODE_TEXT * 20, UNICODE_TEXT * 20, "the quick brown fox jumps over the lazy dog " * 50]
    a, b = train_tokenizer(docs, 400), train_tokenizer(docs, 400)
    assert a.to_json() == b.to_json()
    assert a.vocab_size == 400
    assert [a.special_ids[s] for s in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert a.decode(a.encode(UNICODE_TEXT + CODE_TEXT)) == UNICODE_TEXT + CODE_TEXT
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_tokenizer(docs, 100)


def test_token_stats():
    docs = ["hello world, hello world, hello world\n" * 30]
    bytes_only = train_tokenizer(docs, 256 + len(SPECIAL_TOKENS))  # no merges: one token per byte
    assert token_stats(bytes_only, docs)["tokens_per_byte"] == 1.0
    merged = token_stats(train_tokenizer(docs, 300), docs)
    assert merged["bytes"] == len(docs[0]) and merged["tokens_per_byte"] < 0.5


def test_packaged_tokenizer_compresses_default_corpus(tok):
    stats = token_stats(tok, default_corpus(max_bytes=200_000))
    assert 0.15 < stats["tokens_per_byte"] < 0.4


# ---------------------------------------------------------------------------------------------- FIM


def test_fim_exact_psm_layout():
    text = "def add(a, b):\n    return a + b\n"
    out = apply_fim(text, random.Random(3), rate=1.0)
    rng = random.Random(3)
    rng.random()  # the FIM decision draw
    prefix, middle, suffix = fim_split(text, rng)
    assert prefix + middle + suffix == text
    assert out == f"{FIM_BEGIN}{prefix}{FIM_HOLE}{suffix}{FIM_END}{middle}"
    head, rest = out[len(FIM_BEGIN):].split(FIM_HOLE)
    suf, mid = rest.split(FIM_END)
    assert out.startswith(FIM_BEGIN) and head + mid + suf == text


def test_fim_rate_zero_and_one():
    rng = random.Random(0)
    docs = [f"document number {i} with some text" for i in range(200)]
    assert all(apply_fim(d, rng, 0.0) == d for d in docs)
    outs = [apply_fim(d, rng, 1.0) for d in docs]
    assert all(o.startswith(FIM_BEGIN) and o.count(FIM_HOLE) == 1 and o.count(FIM_END) == 1 for o in outs)
    # split points are character-level and vary between documents
    assert len({o.index(FIM_HOLE) for o in outs}) > 10
    with pytest.raises(ValueError, match="1.5"):
        apply_fim("x", rng, 1.5)


def test_fim_fraction_near_rate():
    rng = random.Random(0)
    n = 20_000
    frac = sum(apply_fim("some document text", rng, 0.1).startswith(FIM_BEGIN) for _ in range(n)) / n
    assert abs(frac - 0.1) < 0.01  # binomial sd is 0.002


def test_fim_is_seeded():
    docs = [f"text {i} " * 5 for i in range(50)]
    a = [apply_fim(d, random.Random(7), 0.5) for d in docs]
    b = [apply_fim(d, random.Random(7), 0.5) for d in docs]
    assert a == b


def test_token_level_fim_matches_text_fim(tok):
    texts = [UNICODE_TEXT, CODE_TEXT * 3, "short", ""] * 5
    ids, n_fim = encode_documents(texts, tok, random.Random(5), fim_rate=0.5)
    rng = random.Random(5)
    expected = [apply_fim(t, rng, 0.5) for t in texts]
    assert [tok.decode(x) for x in ids] == expected
    assert n_fim == sum(e.startswith(FIM_BEGIN) for e in expected) and 0 < n_fim < len(texts)
    for x, e in zip(ids, expected):
        if e.startswith(FIM_BEGIN):  # markers are single ids, in PSM order
            assert x[0] == tok.fim_begin_id
            assert x.index(tok.fim_hole_id) < x.index(tok.fim_end_id)
        assert tok.eos_id not in x  # <eos> is added by packing, not here


# ---------------------------------------------------------------------------------------------- packing


def test_pack_keeps_all_tokens_with_eos_between():
    docs = [[5, 6, 7], [8], [], [9, 10]]
    packed = pack_documents(docs, eos_id=0)
    assert packed.tolist() == [5, 6, 7, 0, 8, 0, 0, 9, 10, 0]
    assert packed.dtype == torch.int32


def test_psm_document_in_stream_ends_with_eos(tok):
    ids, _ = encode_documents(["abcdefgh"], tok, random.Random(0), fim_rate=1.0)
    stream = pack_documents(ids, tok.eos_id)
    text = tok.decode(stream)
    assert text.startswith(FIM_BEGIN) and text.endswith(EOS)
    assert text == psm_text(*_parse_psm(text[: -len(EOS)])) + EOS


def _parse_psm(s):
    head, rest = s[len(FIM_BEGIN):].split(FIM_HOLE)
    suf, mid = rest.split(FIM_END)
    return head, mid, suf


def test_split_by_document():
    train, val = split_documents(100, 0.1, seed=0)
    assert len(val) == 10 and not set(train) & set(val) and sorted(train + val) == list(range(100))
    assert split_documents(100, 0.1, seed=0) == (train, val)
    assert split_documents(100, 0.1, seed=1)[1] != val
    assert split_documents(3, 0.01, seed=0)[1] != []  # at least one validation document
    with pytest.raises(ValueError, match="1.0"):
        split_documents(10, 1.0, seed=0)
    with pytest.raises(ValueError, match="got 1"):
        split_documents(1, 0.5, seed=0)


# ---------------------------------------------------------------------------------------------- batches


def test_get_batch_x_y_offset():
    tokens = torch.arange(1000, dtype=torch.int32)
    g = torch.Generator().manual_seed(0)
    x, y = get_batch(tokens, 4, 16, g)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(y, x + 1)  # y is x shifted by one token
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x[:, 0:1] + torch.arange(16), x)  # contiguous windows
    x2, _ = get_batch(tokens, 4, 16, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


def test_seq_len_larger_than_data():
    tokens = torch.arange(100, dtype=torch.int32)
    with pytest.raises(ValueError, match="seq_len=100"):
        get_batch(tokens, 2, 100)
    get_batch(tokens, 2, 99)  # 99 + 1 tokens fit exactly
    with pytest.raises(ValueError, match="seq_len=20"):
        SequentialBatches(tokens, 5, 20)
    with pytest.raises(ValueError, match="seq_len=200"):
        TokenDataset(tokens, tokens).random("val", 1, 200)


def test_sequential_batches_walk_the_stream():
    tokens = torch.arange(50, dtype=torch.int32)
    it = SequentialBatches(tokens, batch_size=2, seq_len=5)
    x, y = next(it)
    assert x.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]] and torch.equal(y, x + 1)
    x, _ = next(it)
    assert x[0, 0] == 10
    assert it.batches_per_epoch == 4
    for _ in range(2):
        next(it)
    x, _ = next(it)  # 5th batch wraps to a new epoch
    assert x[0, 0] == 0 and it.epoch == 1


@pytest.mark.parametrize("kind", ["sequential", "random"])
def test_resume_gives_identical_next_batches(kind):
    tokens = torch.randint(0, 8192, (1000,), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    ds = TokenDataset(tokens, tokens[:300])
    if kind == "sequential":
        def make():
            return ds.sequential("train", 3, 32)
    else:
        def make():
            return ds.random("train", 3, 32, seed=1)
    it = make()
    for _ in range(7):  # sequential: crosses an epoch boundary (10 batches per epoch) on the way
        next(it)
    state = it.state_dict()
    want = [next(it) for _ in range(5)]
    fresh = make()
    first = next(fresh)
    assert not torch.equal(first[0], want[0][0])  # a fresh iterator is elsewhere...
    fresh.load_state_dict(state)
    got = [next(fresh) for _ in range(5)]  # ...until its state is restored
    for (xa, ya), (xb, yb) in zip(want, got):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_sequential_state_rejects_other_shape():
    tokens = torch.arange(500, dtype=torch.int32)
    state = SequentialBatches(tokens, 2, 8).state_dict()
    with pytest.raises(ValueError, match="batch_size=2"):
        SequentialBatches(tokens, 4, 8).load_state_dict(state)


def test_eval_batches_score_every_token_once():
    tokens = torch.tensor([5, 6, 0, 7, 8, 9, 0], dtype=torch.int32)   # two documents, eos 0
    ds = TokenDataset(tokens, tokens, eos_id=0, pad_id=1)
    (x, y), = list(ds.eval_batches("val", batch_size=4, seq_len=3))
    assert x.tolist() == [[0, 5, 6], [0, 7, 8], [9, 1, 1]]        # <eos> first, then the stream shifted
    assert y.tolist() == [[5, 6, 0], [7, 8, 9], [0, -1, -1]]      # every token a target once, padding -1


def _eval_batches_eager(tokens, batch_size, seq_len, eos_id, pad_id):
    """EvalBatches as first written: the whole split padded and copied up front, then sliced into batches."""
    n, T = len(tokens), seq_len
    n_win = -(-n // T)
    y = torch.full((n_win * T,), IGNORE_INDEX, dtype=torch.long)
    x = torch.full((n_win * T,), pad_id, dtype=torch.long)
    y[:n] = tokens.long()
    x[0] = eos_id
    x[1:n] = tokens[:-1].long()
    x, y = x.view(n_win, T), y.view(n_win, T)
    return [(x[k:k + batch_size], y[k:k + batch_size]) for k in range(0, n_win, batch_size)]


@pytest.mark.parametrize("n, batch_size, seq_len", [(1, 1, 1), (7, 4, 3), (320, 4, 16), (321, 4, 16),
                                                     (300, 5, 8), (50, 64, 128), (1000, 3, 1)])
@pytest.mark.parametrize("dtype", [torch.int32, torch.uint16])
def test_eval_batches_lazy_equal_the_eager_ones(n, batch_size, seq_len, dtype):
    # the trainer's validation numbers depend on these batches: the lazy cut must not move a single token
    tokens = torch.randint(2, 1000, (n,), generator=torch.Generator().manual_seed(n)).to(dtype)
    want = _eval_batches_eager(tokens, batch_size, seq_len, eos_id=0, pad_id=1)
    batches = EvalBatches(tokens, batch_size, seq_len, eos_id=0, pad_id=1)
    got = list(batches)
    assert len(batches) == len(got) == len(want)
    for (xa, ya), (xb, yb) in zip(got, want):
        assert xa.dtype == ya.dtype == torch.long
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert [torch.equal(a[0], b[0]) for a, b in zip(got, list(batches))] == [True] * len(got)   # a second pass


def test_eval_batches_cost_only_the_batches_taken():
    # a split of 10^12 tokens that occupies no memory (a broadcast view): copying it whole cannot work, so the
    # first batches coming back shows that nothing past them is read
    tokens = torch.zeros((), dtype=torch.int32).expand(10 ** 12)
    batches = EvalBatches(tokens, batch_size=4, seq_len=8, eos_id=7, pad_id=1)
    assert len(batches) == 10 ** 12 // 32
    (x0, y0), (x1, y1) = itertools.islice(batches, 2)
    assert x0.shape == y0.shape == x1.shape == (4, 8)
    assert x0[0, 0] == 7 and int(x0.flatten()[1:].sum() + x1.sum() + y0.sum() + y1.sum()) == 0


def test_eval_batches_reject_an_empty_split():
    with pytest.raises(ValueError, match="no token"):
        EvalBatches(torch.zeros(0, dtype=torch.int32), 2, 8, eos_id=0, pad_id=1)


# ---------------------------------------------------------------------------------------------- best-fit


def _stream(lengths, eos=0):
    """A packed stream of documents of the given lengths (eos included), tokens numbered from 10."""
    out, t = [], 10
    for n in lengths:
        out += list(range(t, t + n - 1)) + [eos]
        t += n
    return torch.tensor(out, dtype=torch.int32)


def test_best_fit_decreasing_fills_the_fullest_bin():
    # capacity 10: 7 opens bin 0, 6 opens bin 1, 4 fits only bin 1 (room 4), 3 goes to bin 0 (room 3, the least)
    assert best_fit_decreasing([3, 7, 6, 4], 10) == [[1, 0], [2, 3]]
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        best_fit_decreasing([11], 10)


def test_chunk_document_overlaps_by_one_token():
    assert chunk_document(0, 5, seq_len=8) == [(0, 5)]
    assert chunk_document(0, 9, seq_len=8) == [(0, 9)]                  # exactly one window
    assert chunk_document(10, 30, seq_len=8) == [(10, 19), (18, 27), (26, 30)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_fit_cuts_no_document_unless_longer_than_a_window(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(2, 60) for _ in range(80)]
    tokens, T = _stream(lengths), 32
    rows = pack_best_fit(tokens, T, eos_id=0, pad_id=1)                               # (N, 33)
    assert rows.shape[1] == T + 1
    spans = document_spans(tokens, 0)
    assert [b - a for a, b in spans] == lengths
    flat = rows.flatten().tolist()
    for a, b in spans:
        doc = tokens[a:b].tolist()
        whole = any(rows[r, c:c + len(doc)].tolist() == doc for r in range(len(rows))
                    for c in range(T + 2 - len(doc))) if len(doc) <= T + 1 else False
        assert whole == (len(doc) <= T + 1)            # fits a window: never cut; longer: necessarily cut
        assert all(t in flat for t in doc)             # nothing dropped
    stats = packing_stats(tokens, T, eos_id=0, packing="bestfit")
    assert stats["truncated_documents"] == sum(n > T + 1 for n in lengths)
    n_pad = int((rows == 1).sum())
    assert stats["windows"] == len(rows) and stats["padding_tokens"] == n_pad
    assert stats["padding_share"] == n_pad / rows.numel() and 0 < stats["padding_share"] < 0.5


def test_concat_truncation_and_padding_shares():
    tokens, T = _stream([4, 4, 4, 4]), 5     # windows hold positions [0, 5], [5, 10], [10, 15]
    s = packing_stats(tokens, T, eos_id=0, packing="concat")
    # docs at [0,4) [4,8) [8,12) [12,16): the 2nd (4..7 crosses 5) and 3rd (8..11 crosses 10) are cut
    assert s["truncated_documents"] == 3 - 1 and s["padding_share"] == 0.0 and s["documents"] == 4
    b = packing_stats(tokens, T, eos_id=0, packing="bestfit")
    assert b["truncated_documents"] == 0 and b["windows"] == 4 and b["padding_share"] == 8 / 24
    with pytest.raises(ValueError, match="packing must be one of"):
        packing_stats(tokens, T, eos_id=0, packing="greedy")


def test_packed_batches_mask_padding_and_resume_exactly():
    tokens = _stream([random.Random(0).randint(2, 40) for _ in range(60)])
    ds = TokenDataset(tokens, tokens, eos_id=0, pad_id=1)
    it = ds.random("train", 4, 16, seed=3, packing="bestfit")
    x, y = next(it)
    assert x.shape == y.shape == (4, 16)
    # the target at t is ignored exactly when the next token of the window (x at t + 1) is padding
    assert torch.equal(y[:, :-1] == IGNORE_INDEX, x[:, 1:] == 1)
    assert bool((y[x == 1] == IGNORE_INDEX).all())      # after padding, only padding
    real = y != IGNORE_INDEX
    assert torch.equal(x[:, 1:][real[:, :-1]], y[:, :-1][real[:, :-1]])   # y is x shifted where it is text
    assert not bool((y == 1).any())                                        # no padding id as a target
    for _ in range(5):
        next(it)
    state = it.state_dict()
    want = [next(it) for _ in range(4)]
    fresh = ds.random("train", 4, 16, seed=0, packing="bestfit")
    fresh.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(want, [next(fresh) for _ in range(4)]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(ValueError, match="seq_len=16"):
        ds.random("train", 4, 8, packing="bestfit").load_state_dict(state)


def test_ignore_index_matches_the_model():
    from dsv3_edu.model import IGNORE_INDEX as MODEL_IGNORE
    assert IGNORE_INDEX == MODEL_IGNORE


def test_dataset_unknown_split():
    ds = TokenDataset(torch.arange(10), torch.arange(10))
    with pytest.raises(ValueError, match="'test'"):
        ds.get_batch("test", 1, 2)


# ---------------------------------------------------------------------------------------------- build


def test_build_dataset_from_folder(text_dir, tmp_path, tok):
    out = tmp_path / "build"
    built = build_dataset(source=text_dir, out_dir=out, fim_rate=0.0, val_fraction=0.2, seed=0, progress=False)
    m = built.manifest
    assert built.tokenizer.sha256() == tok.sha256()  # committed tokenizer by default
    tr, va = m["splits"]["train"], m["splits"]["val"]
    assert tr["documents"] == 16 and va["documents"] == 4
    assert not set(tr["names"]) & set(va["names"]) and len(set(tr["names"]) | set(va["names"])) == 20
    # packing kept every token: stream = each document's tokens followed by one <eos>
    corpus = {d.name: d.text for d in load_documents(text_dir)}
    for split, stream in (("train", built.train), ("val", built.val)):
        names = m["splits"][split]["names"]
        expected = pack_documents([tok.encode(corpus[n]) for n in names], tok.eos_id)
        assert torch.equal(stream, expected)
        assert int((stream == tok.eos_id).sum()) == len(names)
    for f in ("manifest.json", "tokenizer.json", "train.pt", "val.pt"):
        assert (out / f).is_file()
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["corpus"]["files"] == 20 and on_disk["corpus"]["sha256"] == m["corpus"]["sha256"]
    assert on_disk["dtype"] == "uint16"
    x, y = built.dataset().get_batch("val", 2, 16, torch.Generator().manual_seed(0))
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_build_dataset_caches_and_rebuilds(text_dir, tmp_path):
    out = tmp_path / "build"
    a = build_dataset(source=text_dir, out_dir=out, fim_rate=0.5, val_fraction=0.2, progress=False)
    mtime = (out / "train.pt").stat().st_mtime_ns
    b = build_dataset(source=text_dir, out_dir=out, fim_rate=0.5, val_fraction=0.2, progress=False)
    assert (out / "train.pt").stat().st_mtime_ns == mtime  # reused, not rewritten
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val) and b.manifest == a.manifest
    assert a.manifest["splits"]["train"]["fim_documents"] > 0
    assert a.manifest["splits"]["val"]["fim_documents"] == 0  # validation stays plain text
    c = build_dataset(source=text_dir, out_dir=out, fim_rate=0.0, val_fraction=0.2, progress=False)
    assert c.manifest["recipe"]["fim_rate"] == 0.0 and not torch.equal(c.train, a.train)
    (out / "manifest.json").unlink()  # an unfinished build has no manifest: it is rebuilt
    d = build_dataset(source=text_dir, out_dir=out, fim_rate=0.0, val_fraction=0.2, progress=False)
    assert torch.equal(d.train, c.train)


def test_build_dataset_trains_tokenizer_when_asked(text_dir, tmp_path):
    out = tmp_path / "build"
    built = build_dataset(source=text_dir, out_dir=out, vocab_size=300, tokenizer="train", fim_rate=0.0,
                          val_fraction=0.2, progress=False)
    assert built.vocab_size == 300 and int(built.train.max()) < 300
    again = build_dataset(source=text_dir, out_dir=out, vocab_size=300, tokenizer="train", fim_rate=0.0,
                          val_fraction=0.2, progress=False)
    assert again.tokenizer.sha256() == built.tokenizer.sha256()
    # vocab_size other than the committed tokenizer's: one is trained even without "train"
    other = build_dataset(source=text_dir, out_dir=tmp_path / "b2", vocab_size=300, fim_rate=0.0,
                          val_fraction=0.2, progress=False)
    assert other.vocab_size == 300
    (cached,) = (tmp_path / "tokenizers").glob("bpe-300-*.json")  # trained once per vocab size, then reused
    third = build_dataset(source=text_dir, out_dir=tmp_path / "b3", vocab_size=300, fim_rate=0.0,
                          val_fraction=0.2, progress=False)
    assert third.tokenizer.sha256() == load_tokenizer(cached).sha256() == other.tokenizer.sha256()


def test_build_manifest_has_compressor_baselines_and_val_bytes(text_dir, tmp_path):
    import bz2
    import lzma
    import zlib
    built = build_dataset(source=text_dir, out_dir=tmp_path / "b", fim_rate=0.0, val_fraction=0.2, progress=False)
    corpus = {d.name: d.text for d in load_documents(text_dir)}
    val_text = "".join(corpus[n] for n in built.manifest["splits"]["val"]["names"]).encode("utf-8")
    comp = built.manifest["compressors"]
    assert comp["xz"] == round(8 * len(lzma.compress(val_text, preset=9 | lzma.PRESET_EXTREME)) / len(val_text), 4)
    assert comp["bz2"] == round(8 * len(bz2.compress(val_text, 9)) / len(val_text), 4)
    assert comp["zlib"] == round(8 * len(zlib.compress(val_text, 9)) / len(val_text), 4)
    ds = built.dataset()
    assert ds.val_bytes == len(val_text) and ds.compressors == comp
    # scoring every validation token once covers exactly the validation documents' bytes
    ys = [y for _, y in ds.eval_batches("val", 3, 16)]
    assert sum(ds.target_bytes(y) for y in ys) == len(val_text)
    assert sum(int((y != IGNORE_INDEX).sum()) for y in ys) == len(built.val)


def test_cli_build(text_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    cli_main(["build", "--source", str(text_dir), "--out", str(out), "--val-fraction", "0.2"])
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{"):])
    assert summary["corpus"]["files"] == 20 and summary["vocab_size"] == 8192
    assert (out / "manifest.json").is_file()


def test_data_modules_import_no_cycle():
    """dsv3_edu.data's modules import each other as a DAG (build.py used to be imported back by tokenizer.py)."""
    import ast
    from pathlib import Path

    import dsv3_edu.data as pkg
    folder = Path(pkg.__file__).parent
    graph = {}
    for f in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):  # lazy imports inside functions too
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                deps.add(node.module.split(".")[0])
        graph[f.stem] = deps
    assert graph["tokenizer"] == {"corpus"} and "build" in graph["__init__"]

    def reaches(a, b, seen=()):
        return any(d == b or (d not in seen and reaches(d, b, (*seen, d))) for d in graph.get(a, ()))
    assert not [m for m in graph if reaches(m, m)]


def test_stats_summary_shows_rule_dropped_files_and_compressors(text_dir, tmp_path):
    from dsv3_edu.data.__main__ import manifest_summary
    built = build_dataset(source=text_dir, out_dir=tmp_path / "b", fim_rate=0.0, val_fraction=0.2, progress=False)
    s = manifest_summary(built.manifest)
    assert s["corpus"]["rule"] == built.manifest["corpus"]["rule"] and s["corpus"]["files"] == 20
    assert set(s["val_bits_per_byte_of_compressors"]) == {"xz", "bz2", "zlib"}
    assert s["dropped_files"] == 0 and "names" not in s["splits"]["val"]
    m = dict(built.manifest, corpus={**built.manifest["corpus"], "dropped_files": 1, "dropped": {"t.py": "why"}})
    assert manifest_summary(m)["dropped"] == {"t.py": "why"}
    json.dumps(s)  # printable as JSON
