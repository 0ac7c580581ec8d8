"""Pictures and explorers for the data notebook: BPE tokens as coloured boxes, FIM split points,
document packing, document lengths and compression against vocabulary size.

The explorers draw their first picture as an ordinary cell output (so an executed notebook shows it
on the web) and redraw that same output in place when a widget changes (``display(..., display_id=True)``).
"""
from __future__ import annotations

import html

import torch

from ..data import EOS, FIM_BEGIN, FIM_END, FIM_HOLE

# light background colours, cycled so that neighbouring tokens differ
PALETTE = ("#fde2e4", "#e2ece9", "#dfe7fd", "#fff1c1", "#e8dff5", "#d7f2e3", "#fce1c8", "#e0f0ff")
PART_COLOURS = {"prefix": "#dfe7fd", "middle": "#fde2e4", "suffix": "#d7f2e3", "special": "#444444"}


def visible(piece: str) -> str:
    """A token's text with its whitespace made visible: space -> '·', newline -> '↵', tab -> '→'."""
    return piece.replace(" ", "·").replace("\n", "↵").replace("\t", "→")


def _box(text: str, colour: str, title: str = "", fg: str = "#000") -> str:
    return (f'<span title="{html.escape(title)}" style="background:{colour};color:{fg};padding:1px 2px;'
            f'margin:1px;border-radius:3px;font-family:monospace;white-space:pre">{html.escape(text)}</span>')


def token_pieces(tok, text: str) -> list[tuple[int, str]]:
    """(id, decoded text) of every token of ``text``. A piece may be a partial UTF-8 character ('\ufffd')."""
    return [(i, tok.decode([i])) for i in tok.encode(text)]


def tokens_html(tok, text: str, max_tokens: int = 300) -> str:
    """HTML: each BPE token of ``text`` in its own coloured box (hover shows its id), and a count line."""
    pieces = token_pieces(tok, text)
    n_bytes = len(text.encode("utf-8"))
    boxes = "".join(_box(visible(p), PALETTE[k % len(PALETTE)], f"id {i}")
                    for k, (i, p) in enumerate(pieces[:max_tokens]))
    more = f" … (+{len(pieces) - max_tokens} tokens)" if len(pieces) > max_tokens else ""
    ratio = len(pieces) / n_bytes if n_bytes else 0.0
    return (f"<div style='line-height:1.9'>{boxes}{more}</div>"
            f"<div><b>{n_bytes}</b> bytes → <b>{len(pieces)}</b> tokens ({ratio:.3f} tokens per byte)</div>")


FIB = "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n"


def token_explorer(tok, text: str = FIB):
    """A text box; its BPE tokens are shown below it and redrawn as you type. Displays, returns None."""
    import ipywidgets as widgets
    from IPython.display import HTML, display

    from .explore import show_controls

    box = widgets.Textarea(value=text, description="text", layout=widgets.Layout(width="95%", height="80px"))
    show_controls(box, "Interactive: run this cell to type your own text (below: the saved example).")
    handle = display(HTML(tokens_html(tok, text)), display_id=True)
    box.observe(lambda change: handle.update(HTML(tokens_html(tok, change["new"]))), names="value")


def fim_html(text: str, i: int, j: int) -> str:
    """HTML: the document cut at characters i <= j into prefix / middle / suffix, and its PSM layout
    (the string ``psm_text(prefix, middle, suffix) + EOS``, drawn in colour)."""
    if not 0 <= i <= j <= len(text):
        raise ValueError(f"fim_html: need 0 <= i <= j <= len(text) = {len(text)}, got i={i}, j={j}")
    prefix, middle, suffix = text[:i], text[i:j], text[j:]
    c = PART_COLOURS
    special = lambda s: _box(s, c["special"], "special token (one id)", fg="#fff")  # noqa: E731
    original = (_box(prefix, c["prefix"], "prefix") + _box(middle, c["middle"], "middle")
                + _box(suffix, c["suffix"], "suffix"))
    psm = (special(FIM_BEGIN) + _box(prefix, c["prefix"], "prefix") + special(FIM_HOLE)
           + _box(suffix, c["suffix"], "suffix") + special(FIM_END) + _box(middle, c["middle"], "middle")
           + special(EOS))
    legend = " ".join(_box(name, c[name]) for name in ("prefix", "middle", "suffix"))
    return (f"<div>{legend}</div><p><b>document</b> (cut at i={i}, j={j})</p>"
            f"<div style='line-height:1.9'>{original}</div>"
            f"<p><b>PSM training text</b>: the model reads prefix and suffix, then learns to write the middle</p>"
            f"<div style='line-height:1.9'>{psm}</div>")


def fim_explorer(text: str, i: int | None = None, j: int | None = None):
    """Two sliders move the FIM cut points; the PSM layout is redrawn in place. Displays, returns None."""
    import ipywidgets as widgets
    from IPython.display import HTML, display

    n = len(text)
    i = n // 3 if i is None else i
    j = 2 * n // 3 if j is None else j
    si = widgets.IntSlider(value=i, min=0, max=n, description="cut i")
    sj = widgets.IntSlider(value=j, min=0, max=n, description="cut j")
    from .explore import show_controls

    show_controls(widgets.HBox([si, sj]))
    handle = display(HTML(fim_html(text, i, j)), display_id=True)

    def redraw(_=None):
        a, b = sorted((si.value, sj.value))      # as fim_split does: the two cuts in order
        handle.update(HTML(fim_html(text, a, b)))

    si.observe(redraw, names="value")
    sj.observe(redraw, names="value")


# ---------------------------------------------------------------------------------------------- plots


def document_ids(stream: torch.Tensor, eos_id: int) -> torch.Tensor:
    """For a packed stream doc_0 <eos> doc_1 <eos> ..., the index of the document each token belongs to
    (a document's closing <eos> belongs to it). (N,) -> (N,) int64."""
    is_eos = (stream == eos_id).long()
    return torch.cumsum(is_eos, 0) - is_eos                 # count the <eos> strictly before each token


def document_lengths(stream: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Tokens per document (without its <eos>) of a packed stream that ends with <eos>. (n_docs,) int64."""
    ends = torch.nonzero(stream == eos_id).flatten()        # (n_docs,) positions of the <eos>
    starts = torch.cat([ends.new_zeros(1), ends[:-1] + 1])
    return ends - starts


def plot_packing(stream: torch.Tensor, eos_id: int, seq_len: int, n_windows: int = 8, start: int = 0, ax=None):
    """Consecutive training windows of a packed stream, one row each, every token coloured by its
    document; white ticks mark <eos>. Windows cut straight through documents, with no padding."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    chunk = stream[start: start + n_windows * seq_len]
    if len(chunk) < n_windows * seq_len:
        raise ValueError(f"plot_packing: the stream from {start} holds {len(chunk)} tokens, "
                         f"fewer than n_windows * seq_len = {n_windows * seq_len}")
    docs = document_ids(chunk, eos_id).view(n_windows, seq_len)      # (W, T)
    docs = docs - docs.min()
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 0.5 + 0.35 * n_windows))
    cmap = ListedColormap(["#8ecae6", "#ffb703", "#90be6d", "#f28482", "#b8a1d9", "#f6bd60"])
    ax.imshow(docs.numpy() % cmap.N, aspect="auto", cmap=cmap, vmin=0, vmax=cmap.N - 1, interpolation="nearest")
    rows, cols = torch.nonzero(chunk.view(n_windows, seq_len) == eos_id, as_tuple=True)
    ax.scatter(cols.numpy(), rows.numpy(), marker="|", s=120, color="white", linewidths=2)
    ax.set_xlabel("position in the window")
    ax.set_ylabel("window")
    ax.set_yticks(range(n_windows))
    ax.set_title(f"{n_windows} consecutive windows of {seq_len} tokens, coloured by document; white tick = <|eos|>",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_document_lengths(lengths, ax=None, title: str = "documents by length"):
    """Histogram of document lengths in tokens, on log-spaced bins, with the median marked."""
    import matplotlib.pyplot as plt
    import numpy as np

    lengths = np.asarray(lengths, dtype=float)
    lengths = lengths[lengths > 0]
    if lengths.size == 0:
        raise ValueError("plot_document_lengths: no non-empty documents")
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4))
    bins = np.logspace(np.log10(lengths.min()), np.log10(lengths.max()), 30)
    ax.hist(lengths, bins=bins, color="C0", alpha=0.8)
    med = float(np.median(lengths))
    ax.axvline(med, color="C3", ls="--", label=f"median {med:,.0f} tokens")
    ax.set_xscale("log")
    ax.set_xlabel("tokens per document (log scale)")
    ax.set_ylabel("documents")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def plot_compression(vocab_sizes, tokens_per_byte, reference: dict | None = None, ax=None):
    """Tokens per byte against vocabulary size (log x); ``reference`` adds labelled points {name: (V, tpb)}."""
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4))
    ax.plot(vocab_sizes, tokens_per_byte, "o-", label="BPE trained here on a small slice")
    for k, (name, (v, tpb)) in enumerate((reference or {}).items()):
        ax.scatter([v], [tpb], marker="*", s=160, color=f"C{k + 1}", zorder=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("vocabulary size")
    ax.set_ylabel("tokens per byte (lower = better compression)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
