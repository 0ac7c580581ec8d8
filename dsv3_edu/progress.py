"""Progress bars: tqdm.auto, plus one fix for saved notebooks.

In Jupyter, tqdm draws an ipywidgets bar whose plain-text stand-in (what a saved notebook shows when it is
opened without running) is captured at the first draw: "0%| | 0/300". ``progress`` shows the same bar but
rewrites that stand-in with the bar's last line when it closes, so a saved notebook reads
"train: 100%|##########| 300/300 [04:38<00:00, ...]".
"""
from __future__ import annotations

_NOTEBOOK_BAR = None


def _notebook_bar():
    global _NOTEBOOK_BAR
    if _NOTEBOOK_BAR is None:
        from IPython.display import display
        from tqdm.notebook import tqdm as notebook_tqdm

        class SavedLineBar(notebook_tqdm):
            """tqdm.notebook's bar, displayed with a display id so that close() can update its saved text."""

            def __init__(self, *args, **kwargs):
                kwargs["display"] = False
                super().__init__(*args, **kwargs)
                self._handle = None
                if not self.disable:
                    self._handle = display(self._bundle(), raw=True, display_id=True)
                    self.displayed = True

            def _bundle(self) -> dict:
                bundle = dict(self.container._repr_mimebundle_())
                bundle["text/plain"] = str(self)
                return bundle

            def close(self):
                super().close()
                handle, self._handle = getattr(self, "_handle", None), None
                if handle is not None:
                    handle.update(self._bundle(), raw=True)

        _NOTEBOOK_BAR = SavedLineBar
    return _NOTEBOOK_BAR


def progress(iterable=None, **kwargs):
    """``tqdm.auto.tqdm(iterable, **kwargs)``; in a Jupyter kernel, a bar whose saved text is its last line."""
    from tqdm.auto import tqdm

    try:
        from tqdm.notebook import tqdm as notebook_tqdm
    except ImportError:                                  # no ipywidgets: tqdm.auto is the console bar anyway
        return tqdm(iterable, **kwargs)
    if not issubclass(tqdm, notebook_tqdm):
        return tqdm(iterable, **kwargs)
    return _notebook_bar()(iterable, **kwargs)
