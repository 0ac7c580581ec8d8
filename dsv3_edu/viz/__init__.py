"""Plots and ipywidgets explorers used by the notebooks. Every function returns a matplotlib Figure."""
