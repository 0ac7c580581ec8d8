"""The notebook explorers (dsv3_edu.viz): valid controls only, redraw on change, a readable saved form."""
from __future__ import annotations

import matplotlib.pyplot as plt

from dsv3_edu.viz.explore import NOTE, Explorer, show_controls
from dsv3_edu.viz.mla import gqa_group_options, kv_cache_explorer
from dsv3_edu.viz.moe import routing_explorer


def _legend(ex: Explorer) -> list[str]:
    return [t.get_text() for t in ex.figure.axes[0].get_legend().get_texts()]


def test_kv_explorer_offers_only_gqa_groups_that_divide_the_heads():
    assert gqa_group_options(12) == [1, 2, 3, 4, 6, 12]
    ex = kv_cache_explorer("deepseek-v3")
    groups = ex.controls["n_kv_groups"]
    assert list(groups.options) == gqa_group_options(128) and groups.value == 8
    before = _legend(ex)
    ex.controls["n_heads"].value = 24              # 8 still divides 24: kept
    assert list(groups.options) == gqa_group_options(24) and groups.value == 8
    ex.controls["n_heads"].value = 40              # 8 divides 40 too; 12 would not exist
    groups.value = 20
    ex.controls["n_heads"].value = 48              # 20 does not divide 48: the largest divisor below it
    assert groups.value == 16
    after = _legend(ex)
    assert after != before and any(t.startswith("GQA-16:") for t in after)
    plt.close("all")


def test_routing_explorer_limits_top_k_to_the_kept_groups():
    ex = routing_explorer(n_experts=16)
    c = ex.controls
    assert (c["n_groups"].value, c["topk_groups"].value, c["top_k"].value) == (4, 2, 4)
    title = ex.figure.axes[0].get_title()
    c["n_groups"].value = 8                         # 2 experts per group
    c["topk_groups"].value = 1                      # 1 group kept: 2 experts, so top-k is clipped to 2
    assert c["top_k"].max == 2 and c["top_k"].value == 2
    assert ex.figure.axes[0].get_title().startswith("top-2 of 16, 1 of 8 groups kept")
    c["n_groups"].value = 2                         # groups kept cannot exceed the groups
    assert c["topk_groups"].max == 2
    assert ex.figure.axes[0].get_title() != title
    plt.close("all")


def test_saved_form_of_controls_is_a_note_not_a_widget_repr(monkeypatch):
    import ipywidgets as widgets

    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False, **kw: shown.append((obj, raw)))
    show_controls(widgets.VBox([widgets.IntSlider()]))
    (bundle, raw), = shown
    assert raw and bundle["text/plain"] == NOTE
    assert "model_id" in bundle["application/vnd.jupyter.widget-view+json"]


def test_text_only_explorer_shows_controls_and_text_and_updates_the_text(monkeypatch):
    import ipywidgets as widgets

    shown, updated = [], []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False, **kw: shown.append((obj, kw)))
    monkeypatch.setattr("IPython.display.update_display", lambda obj, raw=False, **kw: updated.append((obj, kw)))
    slider = widgets.IntSlider(value=2)
    ex = Explorer({"n": slider}, lambda v: (None, f"n is {v['n']}"), figure=False)
    ex._ipython_display_()
    assert [obj.get("text/plain") for obj, _ in shown] == [NOTE, "n is 2"]     # no "(no figure ...)" line
    slider.value = 5
    assert updated == [({"text/plain": "n is 5"}, {"display_id": shown[-1][1]["display_id"]})]
