"""Play a pipeline schedule with a time model: timelines, bubbles, activation memory, parameter copies.

Time model (all per chunk, i.e. one micro-batch through one of a rank's model slices)
- ``F``  forward;  ``B`` backward for the input (ZeroBubble's B);  ``W`` backward for the weights;
- a full backward (BW) costs ``B + W``: this is what the report's Table 2 calls B;
- ``FB`` an F and a full backward of two micro-batches run overlapped (the report's F&B); by default
  ``F + B + W`` (no gain from the overlap);
- ``comm`` the point-to-point latency added when a result crosses ranks.
Each rank runs its list in order; an op starts when the rank is free and its inputs have arrived.

Bubble of a rank = makespan - busy time of that rank (its idle time from the common start to the
common end of the step). With equal per-chunk times this is what Table 2 counts: for 1F1B every rank
idles exactly (PP-1)(F+B_full). ``bubble_table`` prints it next to the formulas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .schedules import METHODS, Op, check_schedule, make_schedule, n_stages_of, needs, produces, topological_order


@dataclass(frozen=True)
class Times:
    """Per-chunk times; ``FB=None`` means F + B + W (no overlap gain). B is the input-grad part only."""
    F: float = 1.0
    B: float = 1.0
    W: float = 1.0
    FB: float | None = None
    comm: float = 0.0

    def __post_init__(self):
        for name in ("F", "B", "W", "comm"):
            v = getattr(self, name)
            if not v >= 0:
                raise ValueError(f"time {name} must be >= 0, got {v!r}")
        if self.FB is not None and not self.FB >= 0:
            raise ValueError(f"time FB must be >= 0, got {self.FB!r}")

    @property
    def full_backward(self) -> float:
        """The report's B: input grad + weight grad."""
        return self.B + self.W

    @property
    def fb(self) -> float:
        return self.F + self.B + self.W if self.FB is None else self.FB

    def duration(self, op: Op) -> float:
        return {"F": self.F, "B": self.B, "W": self.W, "BW": self.B + self.W, "FB": self.fb}[op.kind]


@dataclass
class SimResult:
    """What ``simulate`` measures. Timelines: per rank, a list of (start, end, op)."""
    timelines: list[list[tuple[float, float, Op]]]
    total_time: float
    busy: list[float]
    bubble: list[float]                 # per rank: total_time - busy
    peak_activations: list[int]         # per rank, in units of one micro-batch through one chunk
    peak_activations_until_w: list[int] # same, but holding a micro-batch until its W (not its B) ends
    param_copies: list[float]           # per rank, in units of 1/pp of the model (1F1B = 1.0)
    n_stages: int
    pp: int = field(init=False)

    def __post_init__(self):
        self.pp = len(self.timelines)

    @property
    def max_bubble(self) -> float:
        return max(self.bubble)

    @property
    def peak_activations_pp_units(self) -> float:
        """Max peak in units of one micro-batch through 1/pp of the model (a DualPipeV chunk is half that)."""
        return max(self.peak_activations) * self.pp / self.n_stages


def _peak(intervals: list[tuple[float, float]]) -> int:
    """Max number of overlapping [start, end) intervals; an interval ending at t is freed before one starting at t."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    count = peak = 0
    for _, d in events:
        count += d
        peak = max(peak, count)
    return peak


def simulate(schedule: list[list[Op]], times: Times | None = None, **kw) -> SimResult:
    """Play ``schedule`` under ``times`` (or keyword times F=, B=, W=, FB=, comm=) and measure it."""
    times = times or Times(**kw)
    check_schedule(schedule)
    n_stages = n_stages_of(schedule)
    pp = len(schedule)
    ready: dict[tuple, tuple[float, int]] = {}           # event -> (time available, rank that made it)
    free = [0.0] * pp
    timelines: list[list] = [[None] * len(ops) for ops in schedule]
    for r, i in topological_order(schedule):
        op = schedule[r][i]
        parts = op.parts()
        start = free[r]
        for p in parts:
            for e in needs(p, n_stages):
                t, src = ready[e]
                start = max(start, t + (times.comm if src != r else 0.0))
        end = start + times.duration(op)
        for p in parts:
            ready[produces(p)] = (end, r)
        free[r] = end
        timelines[r][i] = (start, end, op)

    total = max(free)
    busy = [sum(e - s for s, e, _ in tl) for tl in timelines]
    # activations of (mb, stage) are held from the start of its F to the end of its backward
    acts, acts_w = [], []
    for tl in timelines:
        f_start, b_end, w_end = {}, {}, {}
        for s, e, op in tl:
            for p in op.parts():
                key = (p.mb, p.stage)
                if p.kind == "F":
                    f_start[key] = s
                if p.kind in ("B", "BW"):
                    b_end[key] = e
                if p.kind in ("W", "BW"):
                    w_end[key] = e
        acts.append(_peak([(f_start[k], b_end[k]) for k in f_start]))
        acts_w.append(_peak([(f_start[k], w_end[k]) for k in f_start]))
    chunks = [len({p.chunk for op in ops for p in op.parts()}) for ops in schedule]
    params = [c * pp / n_stages for c in chunks]
    return SimResult(timelines, total, busy, [total - b for b in busy], acts, acts_w, params, n_stages)


# ----------------------------------------------------------------------------- Table 2

def table2_bubble(method: str, pp: int, times: Times) -> float:
    """The report's Table 2 bubble, with B_full = B + W.

    1F1B (PP-1)(F+B_full); ZB1P (PP-1)(F+B_full-2W); DualPipe (PP/2-1)(F&B+B_full-3W).
    DualPipeV is DualPipe with 2*pp half-size stages folded onto pp ranks: (PP-1)(F&B+B_full-3W),
    with every time measured for a half-size chunk.
    """
    F, Bf, W, FB = times.F, times.full_backward, times.W, times.fb
    if method == "1f1b":
        return (pp - 1) * (F + Bf)
    if method == "zb1p":
        return (pp - 1) * (F + Bf - 2 * W)
    if method == "dualpipe":
        return (pp / 2 - 1) * (FB + Bf - 3 * W)
    if method == "dualpipev":
        return (pp - 1) * (FB + Bf - 3 * W)
    raise ValueError(f"unknown pipeline method {method!r}; choose one of {METHODS}")


def table2_holds(method: str, pp: int, n_micro: int, times: Times) -> bool:
    """When the simulated bubble equals ``table2_bubble`` (checked by sweeps in the tests).

    All methods: comm = 0. 1F1B: always. ZB1P: n_micro >= pp and W <= min(F, B) (W's must fit in
    the gaps they fill). DualPipe(V): B = F (the figure's cells: an input-grad backward as long as a
    forward), W <= F, and B_full <= F&B <= F + B_full (overlap never slower than running the two one
    after the other, never faster than the backward alone); the formula is then the *largest*
    per-rank bubble (middle ranks), ranks nearer the ends idle less. These are sufficient conditions:
    outside them the measured bubble usually differs, in either direction.
    """
    if times.comm != 0:
        return False
    F, B, W, FB = times.F, times.B, times.W, times.fb
    if method == "1f1b":
        return True
    if method == "zb1p":
        return n_micro >= pp and W <= min(F, B)
    if method in ("dualpipe", "dualpipev"):
        return math.isclose(B, F) and W <= F and B + W <= FB <= F + B + W
    raise ValueError(f"unknown pipeline method {method!r}; choose one of {METHODS}")


TABLE2_PARAMS = {"1f1b": 1.0, "zb1p": 1.0, "dualpipe": 2.0, "dualpipev": 1.0}


def table2_activations(method: str, pp: int) -> int:
    """Table 2's activation column, in micro-batches x chunks held by a rank.

    DualPipeV has no row in the report; folding DualPipe with 2*pp ranks gives 2*pp + 1 half-size chunks.
    """
    return {"1f1b": pp, "zb1p": pp, "dualpipe": pp + 1, "dualpipev": 2 * pp + 1}[method]


def bubble_table(pp: int = 8, n_micro: int = 20, F: float = 1.0, B: float = 1.0, W: float = 1.0,
                 FB: float | None = 2.5, comm: float = 0.0, methods=METHODS) -> list[dict]:
    """Table 2, measured: one row per method with the simulated bubble next to the formula.

    Times are per chunk of 1/pp of the model. DualPipeV cuts the model in 2*pp half-size chunks,
    so its row is simulated with halved F, B, W, F&B (same model, same ranks) and its activations
    are converted to units of 1/pp of the model. ``bubble`` is the largest per-rank idle time (all
    ranks are equal for 1F1B and ZB1P); methods whose constraints ``pp``/``n_micro`` break are skipped.
    """
    times = Times(F=F, B=B, W=W, FB=FB, comm=comm)
    half = Times(F=F / 2, B=B / 2, W=W / 2, FB=times.fb / 2, comm=comm)
    rows = []
    for m in methods:
        try:
            sched = make_schedule(m, pp, n_micro)
        except ValueError:
            continue
        t = half if m == "dualpipev" else times
        res = simulate(sched, t)
        unit = pp / res.n_stages                         # activation of one chunk, in 1/pp of the model
        rows.append({
            "method": m, "pp": pp, "n_micro": n_micro,
            "bubble": res.max_bubble, "formula": table2_bubble(m, pp, t),
            "formula_applies": table2_holds(m, pp, n_micro, t),
            "bubble_min": min(res.bubble), "total_time": res.total_time,
            "params": max(res.param_copies), "params_formula": TABLE2_PARAMS[m],
            "activations": max(res.peak_activations) * unit,
            "activations_formula": table2_activations(m, pp) * unit,
        })
    return rows


def format_bubble_table(rows: list[dict]) -> str:
    """A plain-text table of ``bubble_table`` rows."""
    head = (f"{'method':<10} {'PP':>3} {'n':>4} {'bubble':>8} {'formula':>8} {'applies':>7} {'params':>7} "
            f"{'acts':>5} {'acts(T2)':>8} {'total':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['method']:<10} {r['pp']:>3} {r['n_micro']:>4} {r['bubble']:>8.3g} {r['formula']:>8.3g} "
                     f"{'yes' if r['formula_applies'] else 'no':>7} {r['params']:>6.3g}x "
                     f"{r['activations']:>5.3g} {r['activations_formula']:>8.3g} {r['total_time']:>7.4g}")
    return "\n".join(lines)
