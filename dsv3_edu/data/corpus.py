"""The text corpus: documents read from files, and the default corpus built from the Python standard library.

No network: the default corpus is the ``*.py`` sources of the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``), test suites and site-packages left out, capped at ``max_bytes``.
Each file is one *document*: the unit that FIM transforms, that packing separates with ``<|eos|>``,
and that the train/validation split assigns to exactly one side.

Learners point the same tools at their own text with ``load_documents(["my_notes/", "book.txt"])``.

Note: another Python version ships a slightly different standard library, so the default corpus
(and its sha256 in the manifest) differs between versions. The committed tokenizer stays valid for
any text: it is byte-level, so every string can be encoded.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MAX_BYTES = 10_000_000  # ~10 MB of the ~12 MB of non-test stdlib sources (CPython 3.11): ~3M tokens

# Directories never entered when collecting the default corpus (test suites, installed packages, caches).
STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages",
                              "__pycache__", "lib-dynload"})

STDLIB_RULE = (
    "*.py under the interpreter's stdlib directory; directories test/, tests/, idle_test/, site-packages/, "
    "dist-packages/, __pycache__/, lib-dynload/, config-*/ and hidden ones skipped; files test_*.py and "
    "_sysconfigdata*.py (machine-specific) skipped; files taken in order of sha256(relative path) while the "
    "running total stays <= max_bytes; documents then sorted by relative path"
)


@dataclass(frozen=True)
class Document:
    """One document: ``name`` (path relative to the folder it came from) and its ``text``."""
    name: str
    text: str


@dataclass
class Corpus:
    """A list of documents plus where they came from.

    ``skipped`` names the files left out as binary or non-UTF-8 (reported, never silently lost).
    """
    documents: list[Document]
    source: str                        # "python-stdlib" or the paths given, for the manifest
    rule: str                          # how the files were selected, in words
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.documents)

    def __iter__(self):
        return iter(self.documents)

    def __getitem__(self, i: int) -> Document:
        return self.documents[i]

    @property
    def texts(self) -> list[str]:
        return [d.text for d in self.documents]

    @property
    def n_bytes(self) -> int:
        """Total UTF-8 bytes of all documents."""
        return sum(len(d.text.encode("utf-8")) for d in self.documents)

    def sha256(self) -> str:
        """Hash of the names and contents, in order: equal hashes mean the same corpus."""
        return content_sha256(self.documents)

    def manifest(self) -> dict:
        """What the corpus is, as JSON-ready data (written next to the built data)."""
        return {
            "source": self.source,
            "rule": self.rule,
            "files": len(self.documents),
            "bytes": self.n_bytes,
            "sha256": self.sha256(),
            "skipped_files": len(self.skipped),
            "python": platform.python_version(),
        }


def content_sha256(documents: list[Document]) -> str:
    """sha256 over (name, text) of every document; lengths are hashed too so boundaries count."""
    h = hashlib.sha256()
    for d in documents:
        for part in (d.name.encode("utf-8"), d.text.encode("utf-8")):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- reading


def read_text_file(path: Path) -> str | None:
    """The file's text, or None when it is binary (holds a NUL byte) or not valid UTF-8."""
    raw = path.read_bytes()
    if b"\x00" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _walk_files(folder: Path) -> list[Path]:
    """Every file under ``folder``, hidden files/folders and __pycache__ left out, sorted by path."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
        out += [Path(dirpath, f) for f in filenames if not f.startswith(".")]
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def load_documents(paths, strict: bool = False) -> Corpus:
    """Read text files and folders (recursively) into a Corpus, one document per file.

    paths: a path or a list of paths (files or folders). Files are read as UTF-8; binary or non-UTF-8
    files are skipped and counted in ``corpus.skipped`` (a warning line is printed), or, with
    ``strict=True``, raise a ValueError naming the file. Empty files are dropped.
    Raises FileNotFoundError for a missing path and ValueError when no document is left.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("load_documents: no paths given")
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"load_documents: path {str(p)!r} does not exist")

    documents, skipped = [], []
    for p in paths:
        pairs = [(f, f.relative_to(p).as_posix()) for f in _walk_files(p)] if p.is_dir() else [(p, p.name)]
        for f, name in pairs:
            text = read_text_file(f)
            if text is None:
                if strict:
                    raise ValueError(f"load_documents: {str(f)!r} is binary or not valid UTF-8 (strict=True)")
                skipped.append(str(f))
            elif text:
                documents.append(Document(name, text))
    if skipped:
        print(f"load_documents: skipped {len(skipped)} binary or non-UTF-8 file(s), e.g. {skipped[0]!r}")
    if not documents:
        raise ValueError(f"load_documents: no text documents found in {[str(p) for p in paths]} "
                         f"({len(skipped)} binary/non-UTF-8 file(s) skipped)")
    source = json.dumps([str(p.resolve()) for p in paths])
    return Corpus(documents, source=source, rule="every non-hidden file under the paths, sorted by path",
                  skipped=skipped)


# ---------------------------------------------------------------------------------------------- stdlib


def stdlib_dir() -> Path:
    """The standard library directory of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """Candidate *.py files of the standard library (test suites, site-packages... left out), sorted."""
    root = Path(root) if root is not None else stdlib_dir()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames
                       if d not in STDLIB_SKIP_DIRS and not d.startswith(("config-", "."))]
        out += [Path(dirpath, f) for f in filenames
                if f.endswith(".py") and not f.startswith(("test_", "_sysconfigdata"))]
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def select_files(names: list[str], sizes: list[int], max_bytes: int) -> list[int]:
    """Indices of the files to keep: in order of sha256(name), keep a file while the total stays <= max_bytes.

    Why hash order and not alphabetical: alphabetical would spend the budget on the first letters
    (asyncio, email, encodings...), and hash order spreads it over the whole library while staying
    deterministic; a file missing from another Python install only changes its own slot.
    """
    order = sorted(range(len(names)), key=lambda i: hashlib.sha256(names[i].encode()).hexdigest())
    keep, total = [], 0
    for i in order:
        if total + sizes[i] <= max_bytes:
            keep.append(i)
            total += sizes[i]
    return sorted(keep, key=lambda i: names[i])


def default_corpus(max_bytes: int = DEFAULT_MAX_BYTES, root: Path | None = None) -> Corpus:
    """The embedded default corpus: stdlib sources of this interpreter, at most ``max_bytes`` bytes."""
    if max_bytes <= 0:
        raise ValueError(f"default_corpus: max_bytes must be > 0, got {max_bytes}")
    root = Path(root) if root is not None else stdlib_dir()
    files = stdlib_files(root)
    names = [f.relative_to(root).as_posix() for f in files]
    keep = select_files(names, [f.stat().st_size for f in files], max_bytes)
    documents, skipped = [], []
    for i in keep:
        text = read_text_file(files[i])
        if text is None:
            skipped.append(str(files[i]))
        elif text:
            documents.append(Document(names[i], text))
    if not documents:
        raise ValueError(f"default_corpus: no stdlib file fits in max_bytes={max_bytes} (stdlib at {root})")
    return Corpus(documents, source=f"python-stdlib (max_bytes={max_bytes})",
                  rule=STDLIB_RULE, skipped=skipped)


# ---------------------------------------------------------------------------------------------- writing


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0o600 files; these are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(path: Path, manifest: dict) -> None:
    """Write a manifest as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
