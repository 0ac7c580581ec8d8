"""Tests of dsv3_edu.data: corpus, tokenizer, FIM, packing, batches, build_dataset, CLI."""
from __future__ import annotations

import json
import random

import pytest
import torch

from dsv3_edu.data import (DEFAULT_TOKENIZER_PATH, EOS, FIM_BEGIN, FIM_END, FIM_HOLE, SPECIAL_TOKENS,
                           SequentialBatches, TokenDataset, apply_fim, build_dataset, default_corpus,
                           encode_documents, fim_split, get_batch, load_documents, load_tokenizer,
                           pack_documents, psm_text, split_documents, stdlib_files, token_stats,
                           train_tokenizer)
from dsv3_edu.data.__main__ import main as cli_main
from dsv3_edu.data.corpus import Document, atomic_write_text, content_sha256, select_files

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


def test_stdlib_files_skip_tests_and_site_packages(tmp_path):
    for rel in ["os.py", "json/__init__.py", "test/test_os.py", "json/tests/t.py", "site-packages/x/y.py",
                "idlelib/idle_test/a.py", "config-3.11-x86_64/m.py", "_sysconfigdata__linux.py",
                "email/test_mail.py", "__pycache__/os.py", "README.txt"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x = 1\n")
    got = [p.relative_to(tmp_path).as_posix() for p in stdlib_files(tmp_path)]
    assert got == ["json/__init__.py", "os.py"]
    c = default_corpus(max_bytes=1000, root=tmp_path)
    assert [d.name for d in c] == ["json/__init__.py", "os.py"]


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


def test_committed_tokenizer(tok):
    assert DEFAULT_TOKENIZER_PATH.is_file() and DEFAULT_TOKENIZER_PATH.stat().st_size < 1_000_000
    assert tok.vocab_size == 8192
    assert sorted(tok.special_ids.values()) == [0, 1, 2, 3, 4]


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


def test_committed_tokenizer_compresses_default_corpus(tok):
    stats = token_stats(tok, default_corpus(max_bytes=200_000))
    assert 0.15 < stats["tokens_per_byte"] < 0.4  # ~0.26 on the 10 MB default corpus


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
    make = (lambda: ds.sequential("train", 3, 32)) if kind == "sequential" else (lambda: ds.random("train", 3, 32, seed=1))
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


def test_cli_build(text_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    cli_main(["build", "--source", str(text_dir), "--out", str(out), "--val-fraction", "0.2"])
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{"):])
    assert summary["corpus"]["files"] == 20 and summary["vocab_size"] == 8192
    assert (out / "manifest.json").is_file()
