"""Pipeline pictures (notebook 07): a simulated schedule drawn like the report's Figure 5, and an explorer.

The schedules and their timings come from ``dsv3_edu.parallel.pipeline`` (schedules, simulator); this module
only draws them.

One row per rank, time to the right. Cells are coloured by kind (forward orange, full backward
green, input-grad backward light green, weight-grad backward blue) and shaded darker for chunk 1
(DualPipe's reverse direction, DualPipeV's way back up); the number in a cell is the micro-batch.
With ``color_by="microbatch"`` each micro-batch gets its own hue and cells read "F3", "B3", "W3".
An overlapped F&B cell is split in two halves (forward on top, backward below) inside one black
border, as the report draws "two cells enclosed by a shared black border".
"""
from __future__ import annotations

import matplotlib
import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
from matplotlib.patches import Patch, Rectangle

from ..parallel.pipeline.schedules import METHODS, Op, make_schedule
from ..parallel.pipeline.simulator import SimResult, Times, simulate, table2_bubble

KIND_COLORS = {"F": "#f6a04d", "BW": "#3e9c4f", "B": "#9ad7a0", "W": "#5b8def"}
KIND_NAMES = {"F": "forward", "BW": "backward (full)", "B": "backward for input", "W": "backward for weights"}


def _shade(color: str, chunk: int) -> tuple:
    """Chunk 1 (the other direction) drawn darker."""
    rgb = mcolors.to_rgb(color)
    return tuple(c * 0.62 for c in rgb) if chunk == 1 else rgb


def _mb_color(mb: int, kind: str, chunk: int) -> tuple:
    """color_by="microbatch": one hue per micro-batch, lighter for F, darker for backward."""
    base = mcolors.to_rgb(matplotlib.colormaps["tab20"](mb % 20))
    k = {"F": 1.0, "B": 0.8, "BW": 0.7, "W": 0.55}[kind]
    return _shade(mcolors.to_hex(tuple(c * k for c in base)), chunk)


def _cell(ax, x0: float, x1: float, y0: float, h: float, part: Op, color_by: str, label: bool, fontsize: float):
    color = KIND_COLORS[part.kind] if color_by == "kind" else _mb_color(part.mb, part.kind, part.chunk)
    if color_by == "kind":
        color = _shade(color, part.chunk)
    ax.add_patch(Rectangle((x0, y0), x1 - x0, h, facecolor=color, edgecolor="white", linewidth=0.6))
    if label:
        dark = sum(mcolors.to_rgb(color)) < 1.4
        text = str(part.mb) if color_by == "kind" else f"{part.kind[0]}{part.mb}"
        ax.text((x0 + x1) / 2, y0 + h / 2, text, ha="center", va="center", fontsize=fontsize,
                color="white" if dark else "black")


def plot_timeline(schedule: list[list[Op]], times: Times | None = None, result: SimResult | None = None,
                  ax=None, title: str | None = None, color_by: str = "kind", labels: bool = True):
    """Figure-5-style timeline of ``schedule`` played with ``times`` (or an existing ``result``).

    Returns the matplotlib Figure. ``color_by`` is "kind" (the report's colours) or "microbatch".
    """
    if color_by not in ("kind", "microbatch"):
        raise ValueError(f"color_by must be 'kind' or 'microbatch', got {color_by!r}")
    result = result or simulate(schedule, times or Times())
    pp = len(result.timelines)
    if ax is None:
        _, ax = plt.subplots(figsize=(min(4 + result.total_time * 0.28, 22), 0.55 * pp + 1.4))
    fig = ax.figure
    fontsize = max(5.0, min(9.0, 180 / max(result.total_time, 1)))
    for r, tl in enumerate(result.timelines):
        y = pp - 1 - r                                         # rank 0 on top
        for start, end, op in tl:
            parts = op.parts()
            if len(parts) == 1:
                _cell(ax, start, end, y + 0.05, 0.9, parts[0], color_by, labels, fontsize)
            else:                                              # F&B: two halves, one black border
                _cell(ax, start, end, y + 0.5, 0.45, parts[0], color_by, labels, fontsize * 0.85)
                _cell(ax, start, end, y + 0.05, 0.45, parts[1], color_by, labels, fontsize * 0.85)
                ax.add_patch(Rectangle((start, y + 0.05), end - start, 0.9, fill=False, edgecolor="black",
                                       linewidth=1.4))
    ax.set_xlim(0, result.total_time)
    ax.set_ylim(0, pp)
    ax.set_yticks([pp - 1 - r + 0.5 for r in range(pp)])
    ax.set_yticklabels([f"rank {r}" for r in range(pp)])
    ax.set_xlabel("time")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    kinds = sorted({p.kind for tl in result.timelines for _, _, op in tl for p in op.parts()},
                   key=list(KIND_COLORS).index)
    handles = [Patch(facecolor=KIND_COLORS[k], label=KIND_NAMES[k]) for k in kinds] if color_by == "kind" else []
    if any(op.kind == "FB" for tl in result.timelines for _, _, op in tl):
        handles.append(Patch(facecolor="white", edgecolor="black", linewidth=1.4, label="overlapped F & B"))
    if any(p.chunk == 1 for tl in result.timelines for _, _, op in tl for p in op.parts()):
        handles.append(Patch(facecolor=_shade("#999999", 1), label="chunk 1 (darker)"))
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.18 - 0.3 / pp), ncol=len(handles),
                  fontsize=8, frameon=False)
    ax.set_title(title or f"{pp} ranks, total {result.total_time:g}, bubble per rank (max) {result.max_bubble:g}")
    fig.tight_layout()
    return fig


def schedule_explorer():
    """ipywidgets explorer: pick a method, PP, micro-batches and the F/B/W/F&B/comm times.

    Redraws the timeline and prints the measured bubble (and Table 2's formula), activation memory
    and parameter copies. Returns the widget to display.
    """
    import ipywidgets as widgets  # lazy: only notebooks need it
    from IPython.display import display

    w = {
        "method": widgets.Dropdown(options=list(METHODS), value="dualpipe", description="method"),
        "pp": widgets.IntSlider(value=8, min=1, max=16, description="PP"),
        "n_micro": widgets.IntSlider(value=20, min=1, max=64, description="micro-batches"),
        "F": widgets.FloatSlider(value=1.0, min=0.0, max=4.0, step=0.25, description="F"),
        "B": widgets.FloatSlider(value=1.0, min=0.0, max=4.0, step=0.25, description="B (input)"),
        "W": widgets.FloatSlider(value=1.0, min=0.0, max=4.0, step=0.25, description="W"),
        "FB": widgets.FloatSlider(value=2.5, min=0.0, max=8.0, step=0.25, description="F&B"),
        "comm": widgets.FloatSlider(value=0.0, min=0.0, max=2.0, step=0.25, description="comm"),
    }
    out = widgets.Output()

    def redraw(_=None):
        v = {k: c.value for k, c in w.items()}
        out.clear_output(wait=True)
        with out:
            try:
                sched = make_schedule(v["method"], v["pp"], v["n_micro"])
            except ValueError as e:
                print(f"invalid: {e}")
                return
            times = Times(F=v["F"], B=v["B"], W=v["W"], FB=v["FB"], comm=v["comm"])
            res = simulate(sched, times)
            fig = plot_timeline(sched, result=res, title=f"{v['method']}: PP={v['pp']}, {v['n_micro']} micro-batches")
            display(fig)
            plt.close(fig)
            print(f"total time {res.total_time:g}; bubble per rank: max {res.max_bubble:g}, min {min(res.bubble):g}; "
                  f"Table 2 formula {table2_bubble(v['method'], v['pp'], times):g} (comm = 0, see docs/pipeline.md)")
            print(f"peak activations (micro-batch x chunk): {max(res.peak_activations)}; "
                  f"parameter copies per rank: {max(res.param_copies):g}x")

    for c in w.values():
        c.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([w["method"], w["pp"], w["n_micro"]]),
                         widgets.HBox([w["F"], w["B"], w["W"]]), widgets.HBox([w["FB"], w["comm"]]), out])
