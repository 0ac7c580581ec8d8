"""The one ipywidgets pattern behind every explorer: controls, then a figure (and a line of text) redrawn in place.

A saved notebook keeps outputs but not live widgets. So an explorer shows its controls with a plain-text
stand-in ("run the cell to explore") that JupyterLab displays when the notebook is opened without running it,
and draws its figure and text as ordinary outputs (updated in place through a display id), so the starting
view stays in the saved notebook as a static image instead of a ``VBox(children=...`` repr.

``Explorer`` is what the ``*_explorer`` functions return: put the call last in a cell to display it. Outside
IPython (tests, scripts) it just computes: ``ex.controls``, ``ex.figure`` and ``ex.text`` hold the state.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import contextmanager

import matplotlib.pyplot as plt

NOTE = "Interactive explorer: run this cell to move the controls (the output below is the saved starting view)."


def show_controls(widget, note: str = NOTE) -> None:
    """Display a widget; where it cannot be shown (a saved notebook opened without running) ``note`` shows."""
    from IPython.display import display

    bundle = dict(widget._repr_mimebundle_())
    bundle["text/plain"] = note
    display(bundle, raw=True)


class Explorer:
    """Controls plus ``draw(values) -> (Figure | None, text)``, redrawn whenever a control's value changes.

    ``controls``: name -> widget (values passed to ``draw`` by these names); ``layout``: the widget to show
    (default: the controls in a column). Each redraw closes the previous figure. ``figure=False``: a text-only
    explorer (``draw`` returns ``(None, text)``), shown without the figure's placeholder line.

    Outputs are display ids updated in place, never an ``ipywidgets.Output`` capture (what ``interact`` uses):
    output captured by a widget while a cell runs can leave a headless client (nbclient, CI) waiting forever
    for the cell to finish (jupyter/nbclient#312).
    """

    def __init__(self, controls: dict, draw: Callable[[dict], tuple], layout=None, figure: bool = True):
        import ipywidgets as widgets

        self.controls = controls
        self.draw = draw
        self.layout = layout if layout is not None else widgets.VBox(list(controls.values()))
        self.figure, self.text = None, ""
        self.with_figure = figure
        self._ids = None                                   # display ids once shown
        self._quiet = False
        self.redraw()
        for w in controls.values():
            w.observe(self.redraw, names="value")

    @property
    def values(self) -> dict:
        return {k: w.value for k, w in self.controls.items()}

    @contextmanager
    def quiet(self):
        """No redraws inside: for an observer that adjusts other controls (the control it watches redraws after)."""
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def redraw(self, _=None) -> None:
        if self._quiet:
            return
        fig, text = self.draw(self.values)
        if self.figure is not None:
            plt.close(self.figure)
        self.figure, self.text = fig, text
        if self._ids is not None:
            from IPython.display import update_display

            fig_id, text_id = self._ids
            if fig_id is not None:
                update_display(self._figure_output(), display_id=fig_id, raw=fig is None)
            if text_id is not None:
                update_display({"text/plain": self.text}, display_id=text_id, raw=True)
        if fig is not None:
            plt.close(fig)                                 # keep the object (tests read it), stop pyplot's tracking

    def _figure_output(self):
        return self.figure if self.figure is not None else {"text/plain": "(no figure for these settings)"}

    def _ipython_display_(self) -> None:
        from IPython.display import display

        show_controls(self.layout)
        fig_id = uuid.uuid4().hex if self.with_figure else None
        text_id = uuid.uuid4().hex if self.text else None
        if fig_id is not None:
            display(self._figure_output(), display_id=fig_id, raw=self.figure is None)
        if text_id is not None:
            display({"text/plain": self.text}, display_id=text_id, raw=True)
        self._ids = (fig_id, text_id)


def interactive_figure(controls: list, figure: Callable, layout=None) -> Explorer:
    """An ``Explorer`` over ``controls`` (a list) whose ``figure()`` takes no arguments and returns a Figure."""
    return Explorer({i: w for i, w in enumerate(controls)}, lambda _: (figure(), ""), layout)
