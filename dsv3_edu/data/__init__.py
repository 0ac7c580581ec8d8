"""Data pipeline: corpus -> byte-level BPE -> FIM (PSM, rate 0.1) -> document packing -> (x, y) batches.

Quick start (the trainer's view):

    from dsv3_edu.data import build_dataset
    built = build_dataset()                      # stdlib corpus, committed tokenizer, cached in data/build/
    ds = built.dataset()
    x, y = ds.get_batch("train", batch_size=8, seq_len=256, generator=g, device=device)  # (8, 256) each
    val = ds.sequential("val", batch_size=8, seq_len=256)   # in order; state_dict() for exact resume
    built.tokenizer.decode(x[0])

Command line: ``python -m dsv3_edu.data build [--source PATH] [--vocab-size N] ...``.
"""
from .build import (BuiltDataset, build_dataset, default_build_dir, load_corpus, train_default_tokenizer)
from .corpus import (DEFAULT_MAX_BYTES, Corpus, Document, default_corpus, load_documents, stdlib_files)
from .fim import apply_fim, encode_documents, fim_split, psm_text, psm_tokens
from .packing import (RandomBatches, SequentialBatches, TokenDataset, get_batch, pack_documents,
                      split_documents)
from .tokenizer import (DEFAULT_TOKENIZER_PATH, EOS, FIM_BEGIN, FIM_END, FIM_HOLE, PAD, SPECIAL_TOKENS,
                        BPETokenizer, load_tokenizer, token_stats, train_tokenizer)

__all__ = [
    "BuiltDataset", "build_dataset", "default_build_dir", "load_corpus", "train_default_tokenizer",
    "DEFAULT_MAX_BYTES", "Corpus", "Document", "default_corpus", "load_documents", "stdlib_files",
    "apply_fim", "encode_documents", "fim_split", "psm_text", "psm_tokens",
    "RandomBatches", "SequentialBatches", "TokenDataset", "get_batch", "pack_documents", "split_documents",
    "DEFAULT_TOKENIZER_PATH", "EOS", "FIM_BEGIN", "FIM_END", "FIM_HOLE", "PAD", "SPECIAL_TOKENS",
    "BPETokenizer", "load_tokenizer", "token_stats", "train_tokenizer",
]
