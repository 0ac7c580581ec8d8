"""Pipeline schedules as data, the simulator against the report's Table 2, and the timeline plot."""
import matplotlib.pyplot as plt
import pytest

from dsv3_edu.parallel.pipeline import (
    METHODS,
    Op,
    Times,
    bubble_table,
    check_schedule,
    dualpipe,
    dualpipev,
    format_bubble_table,
    make_schedule,
    one_f_one_b,
    simulate,
    table2_bubble,
    table2_holds,
    zb1p,
)
from dsv3_edu.viz.pipeline import plot_timeline, schedule_explorer

REALISTIC = [  # (F, B input-grad, W, F&B): B_full = B + W
    Times(F=1, B=1, W=1, FB=2.5),        # the report's proportions: B_full = 2F, F&B < F + B_full
    Times(F=1, B=1, W=1, FB=2),
    Times(F=1, B=1, W=1, FB=3),
    Times(F=1, B=1, W=0.5, FB=2),
    Times(F=2, B=2, W=1, FB=4.5),
    Times(F=1, B=1, W=0.25, FB=1.5),
]


def _sizes(method, pp):
    """Micro-batch counts to sweep for a method (all legal)."""
    if method in ("1f1b", "zb1p"):
        return [pp, pp + 1, 2 * pp + 3, 20]
    return sorted({2 * pp, 2 * pp + 2, 4 * pp, max(20, 2 * pp)})


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("pp, n, match", [(0, 4, "pp"), (-2, 4, "pp"), (2.0, 4, "pp"), (4, 0, "n_micro"),
                                          (4, 1.5, "n_micro")])
@pytest.mark.parametrize("fn", [one_f_one_b, zb1p, dualpipe, dualpipev])
def test_bad_sizes_raise(fn, pp, n, match):
    with pytest.raises(ValueError, match=match):
        fn(pp, n)


def test_dualpipe_constraints_follow_the_reference():
    with pytest.raises(ValueError, match="even number of ranks"):
        dualpipe(3, 12)
    with pytest.raises(ValueError, match="even number of micro-batches"):
        dualpipe(4, 9)
    with pytest.raises(ValueError, match="n_micro >= 2\\*pp = 8"):
        dualpipe(4, 6)
    with pytest.raises(ValueError, match="n_micro >= 2\\*pp = 8"):
        dualpipev(4, 7)
    check_schedule(dualpipev(3, 7))          # DualPipeV: any PP, any n >= 2*PP (reference's assertion)
    with pytest.raises(ValueError, match="unknown pipeline method"):
        make_schedule("gpipe", 4, 8)


# ----------------------------------------------------------------------------- structure

@pytest.mark.parametrize("method", METHODS)
def test_every_schedule_is_complete_and_runnable(method):
    for pp in range(1, 9):
        for n in _sizes(method, pp):
            try:
                sched = make_schedule(method, pp, n)
            except ValueError:
                assert method == "dualpipe" and (pp % 2 or n % 2)
                continue
            check_schedule(sched)
            assert len(sched) == pp
            n_f = sum(1 for ops in sched for op in ops for p in op.parts() if p.kind == "F")
            n_stages = 2 * pp if method == "dualpipev" else pp
            assert n_f == n * n_stages


def test_one_f_one_b_order():
    s = one_f_one_b(3, 4)
    assert [op.label for op in s[0]] == ["F0", "F1", "F2", "BW0", "F3", "BW1", "BW2", "BW3"]
    assert [op.label for op in s[2]] == ["F0", "BW0", "F1", "BW1", "F2", "BW2", "F3", "BW3"]


def test_zb1p_keeps_rank_s_ws_pending():
    pp, n = 4, 8
    for s, ops in enumerate(zb1p(pp, n)):
        kinds = [op.kind for op in ops]
        assert kinds.count("B") == kinds.count("W") == n and "BW" not in kinds
        pending = peak = 0
        for k in kinds:
            pending += {"B": 1, "W": -1}.get(k, 0)
            peak = max(peak, pending)
        assert peak == s + 1            # s kept pending + the B just run (rank 0: W right after B)


def test_dualpipe_rank0_matches_the_reference_steps():
    # Hand trace of the reference's step() for pp=4, 20 -> 8 micro-batches, rank 0 (half_rank 0, not middle):
    # 1 nF0 x2: F0 F1 | 2 nF0F1 x1: F2 F4 | 3 nB1W1F1 x1: B4 W4 F5 | 4 nF0B1F1B0 x1: F3&B5 F6&B0
    # 5 nB1F1B0 x1: BW6 F7&B1 | 6 nB1B0 x1 (zb switched on between B1 and B0): BW7 B2 | 7 nWB0 x1: W2 B3 | 8 nW: W3
    s = dualpipe(4, 8)
    assert " ".join(op.label for op in s[0]) == "F0 F1 F2 F4 B4 W4 F5 F3&B5 F6&B0 BW6 F7&B1 BW7 B2 W2 B3 W3"
    # rank 3 mirrors rank 0 with the directions swapped
    assert " ".join(op.label for op in s[3]) == "F4 F5 F6 F0 B0 W0 F1 F7&B1 F2&B4 BW2 F3&B5 BW3 B6 W6 B7 W7"
    # a middle rank (1) does not overlap the first pair of step 4: F then a separate BW
    labels = [op.label for op in s[1]]
    assert labels[4:8] == ["F2", "BW4", "F6&B0", "F3&B5"]


def test_dualpipe_chunks_and_entry_points():
    pp, n = 8, 20
    s = dualpipe(pp, n)
    for r, ops in enumerate(s):
        stages = {(p.chunk, p.stage) for op in ops for p in op.parts()}
        assert stages == {(0, r), (1, pp - 1 - r)}                       # two copies: 2x parameters
        n_fb = sum(op.kind == "FB" for op in ops)
        pos, middle = min(r, pp - 1 - r), min(r, pp - 1 - r) == pp // 2 - 1
        assert n_fb == 2 * (n // 2 - pp + pos + 1) - middle + (pp // 2 - pos - 1)
    first = {m: r for r, ops in enumerate(s) for op in ops for p in op.parts() if p.kind == "F" and p.stage == 0
             for m in [p.mb]}
    assert all(first[m] == 0 for m in range(n // 2)) and all(first[m] == pp - 1 for m in range(n // 2, n))
    assert [op.label for op in s[0][:6]] == [f"F{m}" for m in range(6)]    # step 1: (pp/2-1)*2 forwards


def test_dualpipev_is_a_v():
    pp, n = 4, 10
    s = dualpipev(pp, n)
    for r, ops in enumerate(s):
        assert {p.stage for op in ops for p in op.parts()} == {r, 2 * pp - 1 - r}
    loss_rank = {r for r, ops in enumerate(s) for op in ops for p in op.parts() if p.stage == 2 * pp - 1}
    assert loss_rank == {0}
    assert {p.stage for op in s[pp - 1] for p in op.parts()} == {pp - 1, pp}   # the turn is local


def test_check_schedule_catches_errors():
    good = one_f_one_b(2, 2)
    check_schedule(good)
    with pytest.raises(ValueError, match="missing"):
        check_schedule([good[0][:-1], good[1]])
    with pytest.raises(ValueError, match="out of order"):
        check_schedule([[Op("BW", 0, 0, 0), Op("F", 0, 0, 0), Op("F", 1, 0, 0), Op("BW", 1, 0, 0)], good[1]])
    with pytest.raises(ValueError, match="twice"):
        check_schedule([good[0] + [Op("F", 0, 0, 0)], good[1]])
    deadlock = [[Op("F", 0, 0, 0), Op("BW", 0, 0, 0), Op("F", 1, 0, 0), Op("BW", 1, 0, 0)],
                [Op("F", 1, 0, 1), Op("BW", 1, 0, 1), Op("F", 0, 0, 1), Op("BW", 0, 0, 1)]]
    with pytest.raises(ValueError, match="deadlock"):
        check_schedule(deadlock)
    with pytest.raises(ValueError, match="unknown kind"):
        check_schedule([[Op("X", 0)]])
    split = zb1p(2, 2)
    with pytest.raises(ValueError, match="missing"):          # a B without its W
        check_schedule([[op for op in split[0] if op.kind != "W"], split[1]])


# ----------------------------------------------------------------------------- simulator vs Table 2

@pytest.mark.parametrize("times", REALISTIC + [Times(F=1, B=2, W=1, FB=2.5), Times(F=1, B=0.5, W=2),
                                   Times(F=3, B=1, W=1)])
def test_1f1b_bubble_is_table2_on_every_rank(times):
    for pp in [1, 2, 3, 4, 6, 8]:
        for n in [1, 2] + _sizes("1f1b", pp):
            res = simulate(one_f_one_b(pp, n), times)
            formula = (pp - 1) * (times.F + times.B + times.W)            # (PP-1)(F+B_full)
            assert res.bubble == pytest.approx([formula] * pp)
            assert res.total_time == pytest.approx(formula + n * (times.F + times.B + times.W))


@pytest.mark.parametrize("times", REALISTIC + [Times(F=1, B=2, W=1), Times(F=2, B=1, W=1), Times(F=1, B=1, W=0)])
def test_zb1p_bubble_is_table2_when_w_fits(times):
    assert times.W <= min(times.F, times.B)
    for pp in [1, 2, 3, 4, 6, 8]:
        for n in _sizes("zb1p", pp):
            res = simulate(zb1p(pp, n), times)
            formula = (pp - 1) * (times.F + times.B + times.W - 2 * times.W)   # (PP-1)(F+B_full-2W)
            assert table2_holds("zb1p", pp, n, times)
            assert res.bubble == pytest.approx([formula] * pp)


def test_zb1p_formula_conditions_matter():
    t = Times(F=1, B=1, W=1)
    assert simulate(zb1p(4, 3), t).max_bubble != pytest.approx(table2_bubble("zb1p", 4, t))  # n < pp
    t = Times(F=1, B=1, W=2)                                                                  # W > F
    assert simulate(zb1p(4, 8), t).max_bubble != pytest.approx(table2_bubble("zb1p", 4, t))
    assert not table2_holds("zb1p", 4, 8, t) and not table2_holds("zb1p", 4, 3, Times())


@pytest.mark.parametrize("times", REALISTIC)
def test_dualpipe_bubble_is_table2(times):
    for pp in [2, 4, 6, 8]:
        for n in _sizes("dualpipe", pp):
            res = simulate(dualpipe(pp, n), times)
            formula = (pp / 2 - 1) * (times.fb + times.B + times.W - 3 * times.W)   # (PP/2-1)(F&B+B_full-3W)
            assert table2_holds("dualpipe", pp, n, times)
            assert res.max_bubble == pytest.approx(formula)
            assert min(res.bubble) <= formula + 1e-9


@pytest.mark.parametrize("times", REALISTIC)
def test_dualpipev_bubble_is_folded_table2(times):
    for pp in [1, 2, 3, 4, 5, 6]:
        for n in _sizes("dualpipev", pp) + [2 * pp + 1]:
            res = simulate(dualpipev(pp, n), times)
            assert res.max_bubble == pytest.approx((pp - 1) * (times.fb + times.B - 2 * times.W))


def test_dualpipe_differs_from_table2_when_b_is_not_f():
    """Honest part: with an input-grad B twice as long as F the reference schedule idles more."""
    t = Times(F=1, B=2, W=1, FB=2.5)
    assert not table2_holds("dualpipe", 8, 20, t)
    assert simulate(dualpipe(8, 20), t).max_bubble == pytest.approx(9.5)     # formula says 7.5
    assert table2_bubble("dualpipe", 8, t) == pytest.approx(7.5)
    t = Times(F=1, B=1, W=1, FB=1.5)                                          # F&B shorter than B_full
    assert simulate(dualpipe(8, 20), t).max_bubble == pytest.approx(4.5)     # formula says 1.5


@pytest.mark.parametrize("pp", [2, 4, 6, 8])
def test_memory_and_parameters_match_table2(pp):
    t = Times(F=1, B=1, W=1, FB=2.5)
    r1, rz, rd = simulate(one_f_one_b(pp, 3 * pp), t), simulate(zb1p(pp, 3 * pp), t), simulate(dualpipe(pp, 4 * pp), t)
    rv = simulate(dualpipev(pp, 4 * pp), t)
    assert r1.peak_activations == list(range(pp, 0, -1)) == rz.peak_activations      # PP on the first rank
    assert rz.peak_activations_until_w == [pp] * pp                                  # ZB-H1: PP even counting W
    assert rd.peak_activations == [pp + 1] * pp                                      # DualPipe: PP + 1
    assert rv.peak_activations == [2 * pp + 1] * pp and rv.peak_activations_pp_units == pp + 0.5
    assert r1.param_copies == rz.param_copies == rv.param_copies == [1.0] * pp
    assert rd.param_copies == [2.0] * pp


def test_comm_time_is_added_across_ranks():
    t = Times(F=1, B=2, W=1, comm=0.5)
    res = simulate(one_f_one_b(2, 1), t)
    # F on rank 0, send, F + full backward on rank 1, send, full backward on rank 0
    assert res.total_time == pytest.approx(1 + 0.5 + 1 + 3 + 0.5 + 3)
    assert not table2_holds("1f1b", 2, 1, t)
    base = simulate(dualpipe(4, 8), Times(FB=2.5)).total_time
    assert simulate(dualpipe(4, 8), Times(FB=2.5, comm=0.25)).total_time > base


def test_times_validation():
    with pytest.raises(ValueError, match="time W"):
        Times(W=-1)
    with pytest.raises(ValueError, match="time FB"):
        Times(FB=-0.5)


def test_bubble_table_reproduces_table2():
    rows = bubble_table(pp=8, n_micro=20, F=1, B=1, W=1, FB=2.5)
    assert [r["method"] for r in rows] == list(METHODS)
    for r in rows:
        assert r["formula_applies"]
        assert r["bubble"] == pytest.approx(r["formula"])
        assert r["params"] == r["params_formula"] and r["activations"] == r["activations_formula"]
    by = {r["method"]: r["bubble"] for r in rows}
    assert by["1f1b"] == 21 and by["zb1p"] == 7 and by["dualpipe"] == 4.5
    text = format_bubble_table(rows)
    assert "dualpipe" in text and "4.5" in text
    assert [r["method"] for r in bubble_table(pp=3, n_micro=8)] == ["1f1b", "zb1p", "dualpipev"]


# ----------------------------------------------------------------------------- timeline

def test_plot_timeline_draws_every_cell_and_splits_fb():
    sched = dualpipe(4, 10)
    fig = plot_timeline(sched, Times(F=1, B=1, W=1, FB=2.5))
    ax = fig.axes[0]
    n_cells = sum(len(op.parts()) for ops in sched for op in ops)
    n_fb = sum(op.kind == "FB" for ops in sched for op in ops)
    filled = [p for p in ax.patches if p.get_fill()]
    borders = [p for p in ax.patches if not p.get_fill()]
    assert len(filled) == n_cells and len(borders) == n_fb > 0
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"rank {r}" for r in range(4)]
    plt.close(fig)
    fig = plot_timeline(zb1p(3, 4), color_by="microbatch")
    assert {t.get_text()[0] for t in fig.axes[0].texts} == {"F", "B", "W"}
    plt.close(fig)
    with pytest.raises(ValueError, match="color_by"):
        plot_timeline(zb1p(2, 2), color_by="rainbow")


def test_schedule_explorer_redraws():
    pytest.importorskip("ipywidgets")
    ex = schedule_explorer()
    controls = ex.controls
    assert all(c.style.description_width == "initial" for c in controls.values())   # labels not truncated
    controls["pp"].value = 3                       # DualPipe needs an even PP: the explorer says so
    assert ex.figure is None and "even number of ranks" in ex.text
    controls["method"].value = "zb1p"
    assert ex.figure is not None and "bubble per rank" in ex.text and "Table 2 formula 2 " in ex.text
    plt.close("all")
