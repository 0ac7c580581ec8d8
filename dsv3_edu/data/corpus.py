"""The text corpus: documents read from files, and the default corpus built from the Python standard library.

No network: the default corpus is the ``*.py`` sources of the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``), its own test suite (``test/``, where the interpreter ships it)
included, site-packages left out, capped at ``max_bytes``. Each file is one *document*: the unit that FIM
transforms, that packing separates with ``<|eos|>``, and that the train/validation split assigns to exactly
one side (so a test file and the module it tests may land on different sides, but no file is on both).

The rule keeps code and drops machine-generated tables and data dumps (codec tables in ``encodings/``,
``pydoc_data/topics.py``, ``html/entities.py``, Unicode tables...): a file is dropped when its path matches
one of DROP_PATTERNS or when at least LITERAL_SHARE_MAX of its code lines are pure literals (see
``literal_line_share``). The manifest records the rule and every dropped file with its reason.

Learners point the same tools at their own text with ``load_documents(["my_notes/", "book.txt"])``
(no filtering: every text file is a document).

Note: another Python version ships a slightly different standard library, so the default corpus
(and its sha256 in the manifest) differs between versions. The packaged tokenizers stay valid for
any text: they are byte-level, so every string can be encoded.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import platform
import re
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# Why 32 MB: CPython 3.11's stdlib plus its test suite is ~31.5 MB of *.py, ~29 MB after the rule below,
# i.e. ~9M tokens at vocab 8192: about one epoch of a 10-minute CPU run (tens of millions of tokens at
# most), and it tokenizes in seconds. A learner on a slower machine can lower it (--max-bytes).
DEFAULT_MAX_BYTES = 32_000_000

# Directories never entered when collecting the default corpus (installed packages, caches, build config).
STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "lib-dynload"})

# Paths (relative to the stdlib, fnmatch syntax) dropped whatever their content: generated data and
# files written to be broken (test inputs with bad syntax or a bad coding cookie).
DROP_PATTERNS = ("pydoc_data/*", "*_sysconfigdata*", "*badsyntax*", "*bad_coding*", "lib2to3/tests/data/*")

# A file whose code lines are at least this share of pure literals is a table, not code. Measured on
# CPython 3.11: codec tables score 0.88-0.96, pydoc_data/topics.py and html/entities.py 1.0, locale.py's
# alias table 0.61, real modules 0.0-0.5 (e.g. opcode.py 0.44, mimetypes.py 0.34).
LITERAL_SHARE_MAX = 0.6

STDLIB_RULE = (
    "*.py under the interpreter's stdlib directory, its test suite included; directories site-packages/, "
    "dist-packages/, __pycache__/, lib-dynload/, config-*/ and hidden ones skipped; files matching "
    f"{list(DROP_PATTERNS)} dropped; files whose non-blank non-comment lines are >= {LITERAL_SHARE_MAX:.0%} "
    "pure literals (strings, numbers and punctuation only: tables and data dumps) dropped; the rest taken in "
    "order of sha256(relative path) while the running total stays <= max_bytes; documents then sorted by "
    "relative path"
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
    dropped: dict[str, str] = field(default_factory=dict)   # name -> why the rule dropped it
    candidates: dict = field(default_factory=dict)          # files/bytes seen before the rule and the cap

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
            **({"candidates": self.candidates} if self.candidates else {}),
            **({"dropped_files": len(self.dropped), "dropped": self.dropped} if self.dropped else {}),
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
    """Candidate *.py files of the standard library and its test suite (site-packages... left out), sorted."""
    root = Path(root) if root is not None else stdlib_dir()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames
                       if d not in STDLIB_SKIP_DIRS and not d.startswith(("config-", "."))]
        out += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


# A string literal (any prefix, single or triple quotes, on one line) and a number literal.
_STRING = re.compile(r"""[rRbBuUfF]{0,2}('''|\"\"\"|'|")(?:\\.|(?!\1).)*\1""")
_NUMBER = re.compile(r"\b(?:0[xXoObB][0-9a-fA-F_]+|\d[\d_]*\.?\d*(?:[eE][+-]?\d+)?[jJ]?)\b")
_PUNCT_ONLY = re.compile(r"^[\s,:;()\[\]{}+\-*/|.]*(#.*)?$")
_STARTS_WITH_NAME = re.compile(r"(?![rRbBuUfF]{0,2}['\"])[A-Za-z_]")  # a name, not a string prefix


def is_literal_line(line: str) -> bool:
    """True when the line holds literals and nothing else but punctuation (and maybe a comment).

    ``0x00e9: 0x0082,  # LATIN SMALL LETTER E WITH ACUTE`` and ``'assert': 'The "assert" statement',`` are;
    ``x = 1``, ``return "a"`` and ``f(1, 2)`` are not (a name is code).
    """
    s = line.strip()
    if _STARTS_WITH_NAME.match(s):  # fast path: most code lines start with a keyword or a name
        return False
    no_str = _STRING.sub("", s)
    no_lit = _NUMBER.sub("", no_str)
    return no_lit != s and _PUNCT_ONLY.match(no_lit) is not None


def literal_line_share(text: str) -> float:
    """Share of the non-blank, non-comment lines of ``text`` that are pure literals (0.0 for no such line)."""
    n = lit = 0
    for line in text.splitlines():
        s = line.lstrip()
        if not s or s.startswith("#"):
            continue
        n += 1
        lit += is_literal_line(s)
    return lit / n if n else 0.0


def drop_reason(name: str, text: str) -> str | None:
    """Why the default-corpus rule drops the file ``name`` (relative path) with content ``text``, or None."""
    for pat in DROP_PATTERNS:
        if fnmatch.fnmatch(name, pat):
            return f"path matches {pat!r}"
    share = literal_line_share(text)
    if share >= LITERAL_SHARE_MAX:
        return f"{share:.0%} of its lines are literals (>= {LITERAL_SHARE_MAX:.0%}): a table or data dump"
    return None


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
    """The embedded default corpus: stdlib sources and tests of this interpreter, filtered by the rule
    (STDLIB_RULE), at most ``max_bytes`` bytes."""
    if max_bytes <= 0:
        raise ValueError(f"default_corpus: max_bytes must be > 0, got {max_bytes}")
    root = Path(root) if root is not None else stdlib_dir()
    files = stdlib_files(root)
    names, texts, skipped, dropped = [], [], [], {}
    n_bytes = dropped_bytes = 0
    for f in files:
        name, text = f.relative_to(root).as_posix(), read_text_file(f)
        if text is None:
            skipped.append(str(f))
            continue
        size = len(text.encode("utf-8"))
        n_bytes += size
        why = drop_reason(name, text) if text else "empty"
        if why is not None:
            dropped[name] = why
            dropped_bytes += size
        else:
            names.append(name)
            texts.append(text)
    keep = select_files(names, [len(t.encode("utf-8")) for t in texts], max_bytes)
    documents = [Document(names[i], texts[i]) for i in keep]
    if not documents:
        raise ValueError(f"default_corpus: no stdlib file fits in max_bytes={max_bytes} (stdlib at {root})")
    candidates = {"files": len(files), "bytes": n_bytes, "dropped_bytes": dropped_bytes,
                  "over_cap_files": len(names) - len(keep)}
    return Corpus(documents, source=f"python-stdlib (max_bytes={max_bytes})",
                  rule=STDLIB_RULE, skipped=skipped, dropped=dropped, candidates=candidates)


# ---------------------------------------------------------------------------------------------- writing


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` a temporary file beside ``path``, then rename it over ``path``: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0o600 files; these are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see ``atomic_write``)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_manifest(path: Path, manifest: dict) -> None:
    """Write a manifest as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
