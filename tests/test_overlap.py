"""DualPipe's F&B cell at the component level (dsv3_edu.parallel.overlap)."""
import itertools

import pytest

from dsv3_edu.parallel.overlap import COMM, COMPUTE, NEEDS, ChunkTimes, fb_overlap, fb_sweep


def _grid():
    for attn, mlp, comm, pp in itertools.product((0.5, 1, 2), (0.5, 1, 3), (0, 0.3, 1, 2.5), (0, 0.4)):
        yield ChunkTimes(attn=attn, mlp=mlp, dispatch=comm, combine=comm * 0.8, pp=pp)


def test_overlap_never_slower_than_serial_at_the_same_compute_speed():
    for t in _grid():
        res = fb_overlap(t, comm_sms=0)
        assert res.fb_time <= res.serial_time + 1e-12, t
        # the cell ends when both lanes are done: at least the busier lane's work
        assert res.fb_time >= max(res.compute_time, res.comm_time) - 1e-12, t
        # the computation lane only waits for communication: F&B = computation + exposed communication
        assert res.fb_time == pytest.approx(res.compute_time + res.exposed_comm), t


def test_dependencies_and_lanes_are_respected():
    res = fb_overlap(ChunkTimes(dispatch=1.7, combine=0.6, pp=0.3), comm_sms=20)
    for c, (_lane, s, _end) in res.spans.items():
        assert all(res.spans[n][2] <= s + 1e-12 for n in NEEDS[c]), c
    for lane in (COMPUTE, COMM):
        spans = sorted((s, e) for ln, s, e in res.spans.values() if ln == lane)
        assert all(a[1] <= b[0] + 1e-12 for a, b in itertools.pairwise(spans)), f"{lane} lane runs two at once"


def test_comm_fully_hidden_when_each_all_to_all_fits_under_the_other_chunk():
    # the communication of each stretch fits under the computation it runs under: COMBINE(B) under ATTN(F),
    # DISPATCH(F) under MLP(B) + MLP(W), DISPATCH(B) under MLP(F), COMBINE(F) + both PP sends under ATTN(B) + ATTN(W)
    for comm in (0.2, 0.7, 1.0):
        res = fb_overlap(ChunkTimes(attn=1, mlp=1, dispatch=comm, combine=comm, pp=comm / 2), comm_sms=0)
        assert res.exposed_comm == 0 and res.hidden_comm == pytest.approx(res.comm_time)
        assert res.fb_time == pytest.approx(6.0)                 # the computation alone: 2 F + 2 B + 2 W
    # one PP send too many for the last stretch: COMBINE(F) 0.7 + 2 x 0.7 > ATTN(B) + ATTN(W) = 2
    res = fb_overlap(ChunkTimes(attn=1, mlp=1, dispatch=0.7, combine=0.7, pp=0.7), comm_sms=0)
    assert res.exposed_comm == pytest.approx(0.1) and res.fb_time == pytest.approx(6.1)
    res = fb_overlap(ChunkTimes(dispatch=1, combine=1), comm_sms=20)
    assert res.exposed_comm == 0 and res.fb_time == pytest.approx(6 * 132 / 112)


def test_comm_exposed_when_larger_than_the_computation_it_hides_under():
    res = fb_overlap(ChunkTimes(attn=1, mlp=1, dispatch=2, combine=2), comm_sms=0)
    assert res.exposed_comm > 0 and res.fb_time > res.compute_time
    rows = fb_sweep([0.5, 1, 1.5, 2, 3])
    exposed = [r["exposed"] for r in rows]
    assert exposed[0] == 0 and exposed[1] == 0 and all(a <= b for a, b in itertools.pairwise(exposed))
    assert exposed[-1] > 0


def test_hand_computed_case():
    # attn = mlp = 1, all-to-alls 2, no SM split. By hand: COMBINE(B) 0-2 while ATTN(F) 0-1 (compute idles 1-2);
    # MLP(B) 2-3, MLP(W) 3-4 under DISPATCH(F) 2-4; MLP(F) 4-5 under DISPATCH(B) 4-6 (idle 5-6);
    # ATTN(B) 6-7, ATTN(W) 7-8 under COMBINE(F) 6-8. F&B = 8, serial = 6 + 8 = 14, exposed 2.
    res = fb_overlap(ChunkTimes(attn=1, mlp=1, dispatch=2, combine=2), comm_sms=0)
    assert {c: (s, e) for c, (_, s, e) in res.spans.items() if e > s} == {
        "ATTN(F)": (0, 1), "COMBINE(B)": (0, 2), "MLP(B)": (2, 3), "DISPATCH(F)": (2, 4), "MLP(W)": (3, 4),
        "MLP(F)": (4, 5), "DISPATCH(B)": (4, 6), "ATTN(B)": (6, 7), "COMBINE(F)": (6, 8), "ATTN(W)": (7, 8)}
    assert (res.fb_time, res.serial_time, res.exposed_comm, res.hidden_comm) == (8, 14, 2, 6)
    assert (res.forward_serial, res.backward_serial) == (6, 8)


def test_sm_split_costs_when_there_is_little_to_hide():
    # with no communication the SM split only slows the computation: the overlap is worse than serial
    res = fb_overlap(ChunkTimes(dispatch=0, combine=0), comm_sms=20)
    assert res.saved < 0 and res.fb_time == pytest.approx(6 * 132 / 112)
    # with the report's 1:1 computation-to-communication ratio it saves a lot
    assert fb_overlap(ChunkTimes(), comm_sms=20).saved > 0.25 * 10


def test_bad_input():
    with pytest.raises(ValueError, match="attn"):
        ChunkTimes(attn=-1)
    with pytest.raises(ValueError, match="comm_sms"):
        fb_overlap(comm_sms=132)
    with pytest.raises(ValueError, match="compute order"):
        fb_overlap(compute_order=("ATTN(F)",))
    with pytest.raises(ValueError, match="deadlock"):
        fb_overlap(compute_order=("MLP(F)", "ATTN(F)", "MLP(B)", "MLP(W)", "ATTN(B)", "ATTN(W)"))


def test_plots_return_figures():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dsv3_edu.viz.overlap import plot_fb_overlap, plot_fb_sweep
    fig = plot_fb_overlap(fb_overlap(ChunkTimes(dispatch=2, combine=2)))
    assert len(fig.axes[0].patches) > 12
    fig2 = plot_fb_sweep(fb_sweep([0.5, 1, 2]))
    assert len(fig2.axes[0].lines) == 3
    plt.close("all")
