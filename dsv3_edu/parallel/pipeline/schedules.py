"""Pipeline schedules as data: 1F1B, ZB1P (ZeroBubble ZB-H1), DualPipe and DualPipeV.

A schedule is a list with one entry per pipeline rank; each entry is the list of ``Op`` that rank runs,
in order. Nothing here runs a model: the simulator (``simulator.py``) plays the lists with a time
model, the executor (``executor.py``) plays the same lists on real processes, and ``viz.pipeline``
draws them. Keeping the schedule as plain data is what lets the three agree.

Conventions (used everywhere in this package)
- A *stage* is one slice of the model along the micro-batch's path: a micro-batch runs stage 0,
  1, ..., n_stages-1 forward, then the backward in the reverse order.
- A *chunk* is one of the model slices a rank holds: 1F1B/ZB1P hold one chunk (= stage ``rank``);
  DualPipe holds two, chunk 0 = stage ``rank`` of the forward direction and chunk 1 = stage
  ``pp-1-rank`` (a second copy, used by the micro-batches fed from the other end); DualPipeV holds
  two, chunk 0 = stage ``rank`` and chunk 1 = stage ``2*pp-1-rank`` (the V: down then back up).
- Op kinds:  F  forward of one chunk;
             B  backward for the *input* gradient only (ZeroBubble's B), its W comes later;
             W  backward for the *weights* of a chunk whose B already ran;
             BW full backward (B then W at once);
             FB forward of one micro-batch overlapped with the full backward (BW) of another,
                the report's "F&B" cell.
  Table 2 of the report writes B for the *full* backward, i.e. our B + W.
- Micro-batch ids are global: DualPipe numbers the n/2 micro-batches fed at rank 0 as 0..n/2-1
  (direction 0) and those fed at the last rank as n/2..n-1 (direction 1).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

KINDS = ("F", "B", "W", "BW", "FB")
METHODS = ("1f1b", "zb1p", "dualpipe", "dualpipev")


@dataclass(frozen=True)
class Op:
    """One cell of a pipeline timeline. For ``FB`` the ``b_*`` fields describe the backward part."""
    kind: str
    mb: int
    chunk: int = 0
    stage: int = 0
    b_mb: int = -1
    b_chunk: int = -1
    b_stage: int = -1

    def parts(self) -> tuple["Op", ...]:
        """The elementary ops this cell does: (F, BW) for an overlapped FB cell, else (self,)."""
        if self.kind == "FB":
            return (Op("F", self.mb, self.chunk, self.stage), Op("BW", self.b_mb, self.b_chunk, self.b_stage))
        return (self,)

    @property
    def label(self) -> str:
        """Short text for a timeline cell: "F3", "B3", "W3", "BW3", "F3&B1"."""
        if self.kind == "FB":
            return f"F{self.mb}&B{self.b_mb}"
        return f"{self.kind}{self.mb}"

    def __repr__(self) -> str:
        if self.kind == "FB":
            return f"FB(F mb{self.mb} c{self.chunk} s{self.stage} & BW mb{self.b_mb} c{self.b_chunk} s{self.b_stage})"
        return f"{self.kind}(mb{self.mb} c{self.chunk} s{self.stage})"


# ----------------------------------------------------------------------------- validation

def _check_sizes(pp, n_micro) -> None:
    if not isinstance(pp, int) or isinstance(pp, bool) or pp < 1:
        raise ValueError(f"pp (number of pipeline ranks) must be a positive int, got {pp!r}")
    if not isinstance(n_micro, int) or isinstance(n_micro, bool) or n_micro < 1:
        raise ValueError(f"n_micro (number of micro-batches) must be a positive int, got {n_micro!r}")


def _check_dualpipe_sizes(pp: int, n_micro: int, v: bool) -> None:
    """The reference's assertions: DualPipe needs an even PP and an even n >= 2*PP; DualPipeV n >= 2*PP."""
    _check_sizes(pp, n_micro)
    name = "dualpipev" if v else "dualpipe"
    if not v and (pp < 2 or pp % 2):
        raise ValueError(f"{name} needs an even number of ranks pp >= 2 (half the micro-batches enter at each end), "
                         f"got pp={pp}")
    if not v and n_micro % 2:
        raise ValueError(f"{name} needs an even number of micro-batches (n/2 per direction), got n_micro={n_micro}")
    if n_micro < 2 * pp:
        raise ValueError(f"{name} needs n_micro >= 2*pp = {2 * pp}, got n_micro={n_micro}")


# ----------------------------------------------------------------------------- 1F1B and ZB1P

def one_f_one_b(pp: int, n_micro: int) -> list[list[Op]]:
    """1F1B: rank s runs pp-1-s warm-up forwards, then alternates F and full backward, then drains.

    At most pp - s micro-batches are in flight on rank s, so the first rank holds pp of them.
    """
    _check_sizes(pp, n_micro)
    ranks = []
    for s in range(pp):
        warmup = min(pp - 1 - s, n_micro)
        ops = [Op("F", m, 0, s) for m in range(warmup)]
        for i in range(n_micro - warmup):                   # steady state: one F, one B
            ops += [Op("F", warmup + i, 0, s), Op("BW", i, 0, s)]
        ops += [Op("BW", m, 0, s) for m in range(n_micro - warmup, n_micro)]   # cool-down
        ranks.append(ops)
    return ranks


def zb1p(pp: int, n_micro: int) -> list[list[Op]]:
    """ZeroBubble ZB-H1: 1F1B's order with the backward split into B (input grad) and W (weight grad).

    B stays on the critical path (the next rank down waits for it); W waits. Rank s keeps up to s
    W's pending (the last rank the most): it runs B's early so gradients flow down the pipe faster,
    and pays the W's back in its cool-down, where 1F1B would idle. The in-flight count (F done,
    B not done) is the same as 1F1B; counting until W, every rank holds pp micro-batches.
    """
    _check_sizes(pp, n_micro)
    ranks = []
    for s in range(pp):
        warmup = min(pp - 1 - s, n_micro)
        delay = s                                           # W's rank s keeps pending
        ops = [Op("F", m, 0, s) for m in range(warmup)]
        pending: deque[int] = deque()

        def backward(m: int) -> None:
            ops.append(Op("B", m, 0, s))
            pending.append(m)
            if len(pending) > delay:
                ops.append(Op("W", pending.popleft(), 0, s))

        for i in range(n_micro - warmup):
            ops.append(Op("F", warmup + i, 0, s))
            backward(i)
        for m in range(n_micro - warmup, n_micro):
            backward(m)
        ops += [Op("W", m, 0, s) for m in pending]
        ranks.append(ops)
    return ranks


# ----------------------------------------------------------------------------- DualPipe(V)

class _RankProgram:
    """Builds one rank's op list with the reference's vocabulary: forward / backward / weight chunk.

    ``stages[c]`` is the stage chunk c computes; ``first_mb[c]`` the id of the first micro-batch that
    chunk c sees. Micro-batches go through a chunk in FIFO order, and W's run in the order their
    B's ran (the reference's WeightGradStore is a FIFO queue).
    """

    def __init__(self, stages: tuple[int, int], first_mb: tuple[int, int]):
        self.stages, self.first_mb = stages, first_mb
        self.ops: list[Op] = []
        self.n_f, self.n_b = [0, 0], [0, 0]
        self.pending_w: deque[Op] = deque()

    def _next(self, counter: list[int], c: int) -> Op:
        op = Op("F", self.first_mb[c] + counter[c], c, self.stages[c])
        counter[c] += 1
        return op

    def forward(self, c: int) -> None:
        self.ops.append(self._next(self.n_f, c))

    def backward(self, c: int, zero_bubble: bool = False) -> None:
        """Full backward (BW), or with ``zero_bubble`` only the input grad (B), its W queued."""
        f = self._next(self.n_b, c)
        op = Op("B" if zero_bubble else "BW", f.mb, c, f.stage)
        if zero_bubble:
            self.pending_w.append(op)
        self.ops.append(op)

    def weight(self) -> None:
        b = self.pending_w.popleft()
        self.ops.append(Op("W", b.mb, b.chunk, b.stage))

    def forward_backward(self, cf: int, cb: int) -> None:
        """Forward of chunk ``cf`` overlapped with the full backward of chunk ``cb``: one F&B cell."""
        f, b = self._next(self.n_f, cf), self._next(self.n_b, cb)
        self.ops.append(Op("FB", f.mb, cf, f.stage, b.mb, cb, b.stage))


def _eight_steps(prog: _RankProgram, phase_chunk, half: int, pos: int, n_half: int, middle: bool) -> list[Op]:
    """The reference's 8-step program for one rank (DualPipe and DualPipeV share it).

    ``half`` = ranks on one side of the turn (pp/2 for DualPipe, pp for DualPipeV); ``pos`` = distance
    of this rank from the end where its phase-0 micro-batches enter; ``n_half`` = micro-batches per
    phase-0 chunk; ``middle`` = the rank next to the turn, where the two directions meet.
    ``phase_chunk(p)`` maps the reference's local phase (0: the direction that enters near me) to a chunk.
    """
    c0, c1 = phase_chunk(0), phase_chunk(1)
    for _ in range(2 * (half - pos - 1)):               # 1: nF0   fill with phase-0 forwards
        prog.forward(c0)
    for _ in range(pos + 1):                            # 2: nF0F1 the other direction arrives
        prog.forward(c0)
        prog.forward(c1)
    for _ in range(half - pos - 1):                     # 3: nB1W1F1 first backwards, zero-bubble split
        prog.backward(c1, zero_bubble=True)
        prog.weight()
        prog.forward(c1)
    for i in range(n_half - 2 * half + pos + 1):        # 4: nF0B1F1B0 main step, all overlapped
        if i == 0 and middle:                           # the reference does not overlap this pair
            prog.forward(c0)
            prog.backward(c1)
        else:
            prog.forward_backward(c0, c1)
        prog.forward_backward(c1, c0)
    for _ in range(half - pos - 1):                     # 5: nB1F1B0
        prog.backward(c1)
        prog.forward_backward(c1, c0)
    zb = False                                          # 6: nB1B0, second half of it zero-bubble
    for i in range(pos + 1):
        if i == (pos + 1) // 2 and pos % 2 == 1:
            zb = True
        prog.backward(c1, zero_bubble=zb)
        if i == (pos + 1) // 2 and pos % 2 == 0:
            zb = True
        prog.backward(c0, zero_bubble=zb)
    for _ in range(half - pos - 1):                     # 7: nWB0
        prog.weight()
        prog.backward(c0, zero_bubble=True)
    for _ in range(pos + 1):                            # 8: nW  drain the pending weight grads
        prog.weight()
    assert not prog.pending_w, "every B must get its W"
    return prog.ops


def dualpipe(pp: int, n_micro: int) -> list[list[Op]]:
    """DualPipe: n/2 micro-batches enter at rank 0, n/2 at rank pp-1, and the two streams cross.

    Rank r holds stage r (chunk 0, direction 0) and stage pp-1-r (chunk 1, direction 1): two copies
    of the parameters. Ranks in the second half mirror the first half with the phases swapped.
    """
    _check_dualpipe_sizes(pp, n_micro, v=False)
    half, n_half = pp // 2, n_micro // 2
    ranks = []
    for r in range(pp):
        second = r >= half                              # for those, local phase 0 = direction 1
        pos = min(r, pp - 1 - r)
        prog = _RankProgram(stages=(r, pp - 1 - r), first_mb=(0, n_half))
        ranks.append(_eight_steps(prog, lambda p, s=second: p ^ s, half, pos, n_half, middle=pos == half - 1))
    return ranks


def dualpipev(pp: int, n_micro: int) -> list[list[Op]]:
    """DualPipeV: DualPipe cut in half and folded into a V, with one copy of the parameters.

    The model is cut into 2*pp stages; rank r holds stage r (chunk 0, going down) and stage
    2*pp-1-r (chunk 1, coming back up). All micro-batches enter at rank 0 and their loss is at
    rank 0; the last rank hands chunk 0's output to its own chunk 1 without communication.
    """
    _check_dualpipe_sizes(pp, n_micro, v=True)
    ranks = []
    for r in range(pp):
        prog = _RankProgram(stages=(r, 2 * pp - 1 - r), first_mb=(0, 0))
        ranks.append(_eight_steps(prog, lambda p: p, pp, r, n_micro, middle=r == pp - 1))
    return ranks


def make_schedule(method: str, pp: int, n_micro: int) -> list[list[Op]]:
    """The schedule of ``method`` in METHODS ("1f1b", "zb1p", "dualpipe", "dualpipev")."""
    builders = {"1f1b": one_f_one_b, "zb1p": zb1p, "dualpipe": dualpipe, "dualpipev": dualpipev}
    if method not in builders:
        raise ValueError(f"unknown pipeline method {method!r}; choose one of {METHODS}")
    return builders[method](pp, n_micro)


# ----------------------------------------------------------------------------- dependencies

def n_stages_of(schedule: list[list[Op]]) -> int:
    """Number of stages on a micro-batch's path (pp for 1F1B/ZB1P/DualPipe, 2*pp for DualPipeV)."""
    return 1 + max(p.stage for ops in schedule for op in ops for p in op.parts())


def produces(part: Op) -> tuple:
    """The event an elementary op makes available: ("F", mb, stage), ("B", mb, stage) or ("W", mb, stage).

    ("B", mb, stage) is the input gradient of that stage, made by B or by BW.
    """
    return ("B" if part.kind == "BW" else part.kind, part.mb, part.stage)


def needs(part: Op, n_stages: int) -> list[tuple]:
    """Events an elementary op waits for: the previous stage's forward output, the next stage's
    input gradient (plus my own forward), or my own B for a W."""
    m, s = part.mb, part.stage
    if part.kind == "F":
        return [("F", m, s - 1)] if s > 0 else []
    if part.kind in ("B", "BW"):
        return [("F", m, s)] + ([("B", m, s + 1)] if s < n_stages - 1 else [])
    if part.kind == "W":
        return [("B", m, s)]
    raise ValueError(f"not an elementary op: {part!r}")


def topological_order(schedule: list[list[Op]]) -> list[tuple[int, int]]:
    """An order of (rank, index) pairs that respects every rank's list order and every dependency.

    Raises ValueError (naming the stuck ops) if the ranks would wait on each other forever.
    """
    n_stages = n_stages_of(schedule)
    done: set[tuple] = set()
    ptr = [0] * len(schedule)
    order: list[tuple[int, int]] = []
    total = sum(len(ops) for ops in schedule)
    while len(order) < total:
        progressed = False
        for r, ops in enumerate(schedule):
            while ptr[r] < len(ops):
                parts = ops[ptr[r]].parts()               # the parts of an FB cell run together:
                if any(e not in done for p in parts for e in needs(p, n_stages)):   # neither feeds the other
                    break
                done.update(produces(p) for p in parts)
                order.append((r, ptr[r]))
                ptr[r] += 1
                progressed = True
        if not progressed:
            stuck = {r: ops[ptr[r]] for r, ops in enumerate(schedule) if ptr[r] < len(ops)}
            raise ValueError(f"schedule deadlocks: every rank waits; next ops per rank: {stuck}")
    return order


def check_schedule(schedule: list[list[Op]]) -> None:
    """Raise ValueError unless the schedule is a complete, runnable training step.

    Checks: known op kinds; every micro-batch runs every stage exactly once forward and once
    backward (B or BW), and a W exactly when its backward was split (B); a micro-batch's F, B and W
    of a stage sit on one rank in that order (its activations live there); the cross-rank
    dependencies (forward s -> s+1, backward s+1 -> s) can all be met without deadlock.
    """
    if not schedule:
        raise ValueError("empty schedule: need at least one rank")
    where: dict[tuple, tuple[int, int]] = {}            # event -> (rank, position in that rank's list)
    for r, ops in enumerate(schedule):
        for i, op in enumerate(ops):
            if op.kind not in KINDS:
                raise ValueError(f"rank {r} op {i}: unknown kind {op.kind!r}; kinds are {KINDS}")
            for p in op.parts():
                key = produces(p)
                if key in where:
                    raise ValueError(f"{key} is done twice (rank {where[key][0]} and rank {r})")
                where[key] = (r, i)
                if p.kind == "BW":
                    where[("W", p.mb, p.stage)] = (r, i)   # a full backward includes the W
    n_stages = n_stages_of(schedule)
    mbs = sorted({k[1] for k in where})
    for m in mbs:
        for s in range(n_stages):
            f, b, w = where.get(("F", m, s)), where.get(("B", m, s)), where.get(("W", m, s))
            if f is None or b is None or w is None:
                missing = [n for n, e in zip("FBW", (f, b, w)) if e is None]
                raise ValueError(f"micro-batch {m} stage {s}: missing {missing}")
            if not (f[0] == b[0] == w[0]):
                raise ValueError(f"micro-batch {m} stage {s}: F, B, W on different ranks {f[0]}, {b[0]}, {w[0]}")
            if not (f[1] < b[1] <= w[1]):
                raise ValueError(f"micro-batch {m} stage {s} on rank {f[0]}: F, B, W out of order")
    topological_order(schedule)
