"""Data pipeline: corpus -> byte-level BPE -> FIM (PSM, rate 0.1) -> document packing -> (x, y) batches.

Quick start (the trainer's view):

    from dsv3_edu.data import build_dataset
    built = build_dataset()                      # stdlib corpus, packaged tokenizer, cached in data/build/vocab8192/
    ds = built.dataset()
    x, y = ds.get_batch("train", batch_size=8, seq_len=256, generator=g, device=device)  # (8, 256) each
    val = ds.sequential("val", batch_size=8, seq_len=256)   # in order; state_dict() for exact resume
    train = ds.random("train", 8, 256, seed=0, packing="bestfit")   # best-fit packed, targets -1 at padding
    built.tokenizer.decode(x[0])

Bits per byte of the validation text: ``dsv3_edu.evaluate.evaluate_bits_per_byte(model, ds, B, T)``, or by
hand ``bits_per_byte(summed_nats, ds.target_bytes(y))``; the compressors' figures are ``ds.compressors``.

Command line: ``python -m dsv3_edu.data build [--source PATH] [--vocab-size N] ...``.
"""
from .build import (
    BuiltDataset,
    build_dataset,
    compressor_bits_per_byte,
    default_build_dir,
    load_corpus,
    tokenizer_for,
    train_default_tokenizer,
)
from .corpus import (
    DEFAULT_MAX_BYTES,
    Corpus,
    Document,
    default_corpus,
    drop_reason,
    literal_line_share,
    load_documents,
    stdlib_files,
)
from .fim import apply_fim, encode_documents, fim_split, psm_text, psm_tokens
from .packing import (
    IGNORE_INDEX,
    EvalBatches,
    PackedBatches,
    RandomBatches,
    SequentialBatches,
    TokenDataset,
    best_fit_decreasing,
    get_batch,
    pack_best_fit,
    pack_documents,
    packing_stats,
    split_documents,
)
from .tokenizer import (
    DEFAULT_TOKENIZER_PATH,
    EOS,
    FIM_BEGIN,
    FIM_END,
    FIM_HOLE,
    PAD,
    SPECIAL_TOKENS,
    BPETokenizer,
    load_tokenizer,
    save_tokenizer,
    token_stats,
    train_tokenizer,
)

__all__ = [
    "BuiltDataset", "build_dataset", "compressor_bits_per_byte", "default_build_dir", "load_corpus",
    "tokenizer_for", "train_default_tokenizer",
    "DEFAULT_MAX_BYTES", "Corpus", "Document", "default_corpus", "drop_reason", "literal_line_share",
    "load_documents", "stdlib_files",
    "apply_fim", "encode_documents", "fim_split", "psm_text", "psm_tokens",
    "IGNORE_INDEX", "EvalBatches", "PackedBatches", "RandomBatches", "SequentialBatches", "TokenDataset",
    "best_fit_decreasing", "get_batch", "pack_best_fit", "pack_documents", "packing_stats", "split_documents",
    "DEFAULT_TOKENIZER_PATH", "EOS", "FIM_BEGIN", "FIM_END", "FIM_HOLE", "PAD", "SPECIAL_TOKENS",
    "BPETokenizer", "load_tokenizer", "save_tokenizer", "token_stats", "train_tokenizer",
]
