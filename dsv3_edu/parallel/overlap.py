"""DualPipe's F&B cell at the component level: how a forward and a backward chunk hide each other's all-to-all.

The report (section 3.2.1, Figure 4) divides each chunk into four components: attention, all-to-all
dispatch, MLP and all-to-all combine; a backward chunk splits attention and MLP into "backward for input"
(B) and "backward for weights" (W), as in ZeroBubble; and a PP communication component sends the
chunk's output to the next pipeline rank. For a pair of forward and backward chunks it rearranges these
components and splits the GPU's SMs between communication and computation, so that "both all-to-all and PP
communication can be fully hidden".

This module plays one such pair on two lanes, computation and communication, from per-component times:

- each lane runs its components in a fixed order (``COMPUTE_ORDER``, ``COMM_ORDER``); a component starts
  when its lane is free and the components it needs are done (``NEEDS``), like the pipeline simulator;
- ``comm_sms`` of the ``total_sms`` streaming multiprocessors run the communication for the whole cell
  (the report: 20 of the H800's 132), so every computation runs ``total_sms / (total_sms - comm_sms)``
  times slower than with all SMs;
- the serial reference runs the same components one after the other with all SMs computing.

The two chains of the pair (forward of micro-batch a, backward of micro-batch b):

    forward :  ATTN(F) -> DISPATCH(F) -> MLP(F) -> COMBINE(F) -> PP(F)
    backward:  COMBINE(B) -> MLP(B) -> DISPATCH(B) -> ATTN(B) -> PP(B);  MLP(W) after MLP(B), ATTN(W) after ATTN(B)

(the backward of a combine is an all-to-all that sends the gradients back to the experts, the backward of a
dispatch one that returns them to the attention's rank). Nothing here is measured on a GPU: the times are
the inputs, the timeline is what they imply.
"""
from __future__ import annotations

from dataclasses import dataclass

COMPUTE, COMM = "compute", "comm"

# (component, lane); the chunk a component belongs to is its suffix: (F) forward, (B) backward for input,
# (W) backward for weights; communication of the backward chunk is marked (B) too.
LANE = {
    "ATTN(F)": COMPUTE, "MLP(F)": COMPUTE, "MLP(B)": COMPUTE, "MLP(W)": COMPUTE, "ATTN(B)": COMPUTE,
    "ATTN(W)": COMPUTE,
    "DISPATCH(F)": COMM, "COMBINE(F)": COMM, "PP(F)": COMM, "COMBINE(B)": COMM, "DISPATCH(B)": COMM,
    "PP(B)": COMM,
}
NEEDS = {
    "ATTN(F)": (), "DISPATCH(F)": ("ATTN(F)",), "MLP(F)": ("DISPATCH(F)",), "COMBINE(F)": ("MLP(F)",),
    "PP(F)": ("COMBINE(F)",),
    "COMBINE(B)": (), "MLP(B)": ("COMBINE(B)",), "MLP(W)": ("MLP(B)",), "DISPATCH(B)": ("MLP(B)",),
    "ATTN(B)": ("DISPATCH(B)",), "ATTN(W)": ("ATTN(B)",), "PP(B)": ("ATTN(B)",),
}
# One order per lane that lets each chunk's communication run under the other chunk's computation:
# the backward's first all-to-all under the forward attention, the forward dispatch under the MLP backward,
# and so on. Figure 4 draws the same interleaving with the window starting elsewhere (its boundaries of the
# transformer blocks are "not aligned"); W's are placed where they cover an all-to-all in flight.
COMPUTE_ORDER = ("ATTN(F)", "MLP(B)", "MLP(W)", "MLP(F)", "ATTN(B)", "ATTN(W)")
COMM_ORDER = ("COMBINE(B)", "DISPATCH(F)", "DISPATCH(B)", "COMBINE(F)", "PP(F)", "PP(B)")
H800_SMS = 132             # streaming multiprocessors of an H800 (and H100 SXM)
REPORT_COMM_SMS = 20       # the report: 20 SMs suffice for the all-to-all communication


@dataclass(frozen=True)
class ChunkTimes:
    """Per-component times of one chunk (any unit), computation with all SMs.

    ``attn``, ``mlp``: forward computation; the backward for input costs ``b_ratio`` times the forward and the
    backward for weights ``w_ratio`` times (about 1 and 1: each matmul's backward is two matmuls of the same
    size, one for the input gradient, one for the weight gradient). ``dispatch``, ``combine``: one all-to-all
    each, the same volume forward and backward. ``pp``: one point-to-point send to the next pipeline rank.
    """
    attn: float = 1.0
    mlp: float = 1.0
    dispatch: float = 1.0
    combine: float = 1.0
    pp: float = 0.0
    b_ratio: float = 1.0
    w_ratio: float = 1.0

    def __post_init__(self):
        for name in ("attn", "mlp", "dispatch", "combine", "pp", "b_ratio", "w_ratio"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"ChunkTimes.{name} must be a number >= 0, got {v!r}")

    def durations(self) -> dict[str, float]:
        """Time of every component with all SMs computing."""
        b, w = self.b_ratio, self.w_ratio
        return {
            "ATTN(F)": self.attn, "MLP(F)": self.mlp, "MLP(B)": b * self.mlp, "MLP(W)": w * self.mlp,
            "ATTN(B)": b * self.attn, "ATTN(W)": w * self.attn,
            "DISPATCH(F)": self.dispatch, "COMBINE(F)": self.combine, "COMBINE(B)": self.combine,
            "DISPATCH(B)": self.dispatch, "PP(F)": self.pp, "PP(B)": self.pp,
        }


@dataclass
class OverlapResult:
    """The F&B cell played on two lanes. ``spans``: component -> (lane, start, end)."""
    spans: dict[str, tuple[str, float, float]]
    fb_time: float            # the overlapped cell: the report's F&B
    serial_time: float        # the same components one after the other, all SMs computing: F + B_full
    compute_time: float       # total computation in the overlapped cell (slowed by the SM split)
    comm_time: float          # total communication
    exposed_comm: float       # communication during which no computation runs
    slowdown: float           # total_sms / (total_sms - comm_sms)
    forward_serial: float = 0.0    # F: the forward chunk alone, serial
    backward_serial: float = 0.0   # B_full: the backward chunk alone, serial
    weight_serial: float = 0.0     # W: its backward-for-weights components, all SMs computing

    @property
    def hidden_comm(self) -> float:
        """Communication that runs while the computation lane is busy."""
        return self.comm_time - self.exposed_comm

    @property
    def saved(self) -> float:
        """Serial minus overlapped: what the overlap buys (negative if the SM split costs more than it hides)."""
        return self.serial_time - self.fb_time

    def pipeline_times(self):
        """The cell in the pipeline simulator's terms: Times(F, B = input-grad part, W, FB = this cell's F&B)."""
        from .pipeline.simulator import Times
        return Times(F=self.forward_serial, B=self.backward_serial - self.weight_serial, W=self.weight_serial,
                     FB=self.fb_time)

    def summary(self) -> str:
        return (f"F&B {self.fb_time:.3g} vs serial F + B_full {self.serial_time:.3g} "
                f"(saves {self.saved / self.serial_time:.0%}); communication {self.comm_time:.3g}: "
                f"hidden {self.hidden_comm:.3g}, exposed {self.exposed_comm:.3g}; "
                f"computation slowed x{self.slowdown:.3f} by the SM split")


def _check_orders(compute_order, comm_order) -> None:
    for lane, order in ((COMPUTE, compute_order), (COMM, comm_order)):
        want = sorted(c for c, ln in LANE.items() if ln == lane)
        if sorted(order) != want:
            raise ValueError(f"{lane} order must list each of {want} once, got {list(order)}")


def _overlap_length(xs: list[tuple[float, float]], ys: list[tuple[float, float]]) -> float:
    """Length of (union of xs) intersected with (union of ys); each list's intervals are disjoint."""
    return sum(max(0.0, min(b, d) - max(a, c)) for a, b in xs for c, d in ys)


def fb_overlap(times: ChunkTimes | None = None, comm_sms: int = REPORT_COMM_SMS, total_sms: int = H800_SMS,
               compute_order: tuple[str, ...] = COMPUTE_ORDER, comm_order: tuple[str, ...] = COMM_ORDER
               ) -> OverlapResult:
    """Play one forward chunk and one backward chunk overlapped on a computation and a communication lane.

    ``comm_sms`` of ``total_sms`` SMs serve the communication during the whole cell, so computation runs
    slower by total/(total - comm_sms); ``comm_sms = 0`` is the ideal of free communication hardware.
    Raises ValueError if the lane orders cannot run (a component waits for one that comes later on its lane).
    """
    times = times or ChunkTimes()
    if not isinstance(total_sms, int) or total_sms < 1:
        raise ValueError(f"total_sms must be a positive int, got {total_sms!r}")
    if not isinstance(comm_sms, int) or not 0 <= comm_sms < total_sms:
        raise ValueError(f"comm_sms must be an int in 0..total_sms-1 = {total_sms - 1}, got {comm_sms!r}")
    _check_orders(compute_order, comm_order)
    base = times.durations()
    slowdown = total_sms / (total_sms - comm_sms)
    dur = {c: t * slowdown if LANE[c] == COMPUTE else t for c, t in base.items()}

    done: dict[str, float] = {}
    spans: dict[str, tuple[str, float, float]] = {}
    queues = {COMPUTE: list(compute_order), COMM: list(comm_order)}
    free = {COMPUTE: 0.0, COMM: 0.0}
    while queues[COMPUTE] or queues[COMM]:
        progressed = False
        for lane, queue in queues.items():
            while queue and all(n in done for n in NEEDS[queue[0]]):
                c = queue.pop(0)
                start = max([free[lane]] + [done[n] for n in NEEDS[c]])
                done[c] = free[lane] = start + dur[c]
                spans[c] = (lane, start, done[c])
                progressed = True
        if not progressed:
            heads = {lane: q[0] for lane, q in queues.items() if q}
            raise ValueError(f"the lane orders deadlock: each lane's next component waits for the other: {heads}")

    fb_time = max(end for _, _, end in spans.values())
    comp = [(s, e) for ln, s, e in spans.values() if ln == COMPUTE and e > s]
    comm = [(s, e) for ln, s, e in spans.values() if ln == COMM and e > s]
    comm_time = sum(e - s for s, e in comm)
    exposed = comm_time - _overlap_length(comp, comm)
    fwd = [c for c in base if c.endswith("(F)")]
    return OverlapResult(
        spans=spans, fb_time=fb_time, serial_time=sum(base.values()),
        compute_time=sum(e - s for s, e in comp), comm_time=comm_time, exposed_comm=max(0.0, exposed),
        slowdown=slowdown, forward_serial=sum(base[c] for c in fwd),
        backward_serial=sum(t for c, t in base.items() if c not in fwd),
        weight_serial=sum(t for c, t in base.items() if c.endswith("(W)")))


def fb_sweep(ratios, times: ChunkTimes | None = None, comm_sms: int = REPORT_COMM_SMS,
             total_sms: int = H800_SMS) -> list[dict]:
    """F&B vs serial as the communication grows: each ratio scales ``dispatch``, ``combine`` and ``pp``.

    Returns one dict per ratio: ratio, fb, serial, exposed, hidden (communication/computation ratio of the
    pair with all SMs computing as ``comm_per_compute``).
    """
    times = times or ChunkTimes()
    rows = []
    for r in ratios:
        t = ChunkTimes(attn=times.attn, mlp=times.mlp, dispatch=times.dispatch * r, combine=times.combine * r,
                       pp=times.pp * r, b_ratio=times.b_ratio, w_ratio=times.w_ratio)
        res = fb_overlap(t, comm_sms=comm_sms, total_sms=total_sms)
        base = t.durations()
        compute = sum(v for c, v in base.items() if LANE[c] == COMPUTE)
        rows.append({"ratio": r, "comm_per_compute": res.comm_time / compute if compute else float("inf"),
                     "fb": res.fb_time, "serial": res.serial_time, "exposed": res.exposed_comm,
                     "hidden": res.hidden_comm})
    return rows
