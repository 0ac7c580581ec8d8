"""Helpers behind notebooks/06_fp8.ipynb: the encoding explorer and the error plots (dsv3_edu.viz.fp8)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dsv3_edu.fp8 import quant_error  # noqa: E402
from dsv3_edu.viz.fp8 import fp8_encoding, plot_error_by_channel, plot_error_vs_outlier, relative_error_map  # noqa: E402


def test_fp8_encoding_rounds_like_torch_and_flags_edge_cases():
    r = fp8_encoding(31.2, 1.0, "e4m3")
    assert r["fp8"] == 32.0 and r["bits"] == "0.1100.000" and r["byte"] == 0x60
    assert r["rel_err"] == pytest.approx(0.8 / 31.2)
    # with a scale: value / scale is what gets rounded, dequantized = fp8 * scale
    r = fp8_encoding(0.3, 10 / 448, "e4m3")
    assert r["scaled"] == pytest.approx(13.44, rel=1e-6) and r["fp8"] == 13.0
    assert r["dequantized"] == pytest.approx(13.0 * 10 / 448)
    # 10^6 below the tile's amax: E4M3 flushes to zero, E5M2 keeps it
    assert fp8_encoding(1e-5, 10 / 448, "e4m3")["underflow"]
    e5 = fp8_encoding(1e-5, 10 / 57344, "e5m2")
    assert not e5["underflow"] and e5["rel_err"] < 0.13
    assert fp8_encoding(0.001, 1.0, "e4m3")["subnormal"]
    sat = fp8_encoding(500.0, 1.0, "e4m3")
    assert sat["saturated"] and sat["fp8"] == 448.0
    with pytest.raises(ValueError, match="scale"):
        fp8_encoding(1.0, 0.0)
    with pytest.raises(ValueError, match="value"):
        fp8_encoding(float("nan"))


def test_relative_error_map_matches_quant_error():
    x = torch.randn(16, 256, generator=torch.Generator().manual_seed(0))
    x[0, 3] = 0.0
    err = relative_error_map(x, "per_tensor")
    assert err.shape == x.shape and err[0, 3] == 0
    assert err[x != 0].mean().item() == pytest.approx(quant_error(x, "per_tensor", metric="mean"), rel=1e-5)


def test_plots_return_figures():
    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(1))
    x[:, 2] *= 1e4
    fig = plot_error_by_channel(x, title="t")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(fig.axes[0].lines) == 3 + 1 and labels[0].startswith("per_tensor")   # 3 methods + 1 tile boundary
    plt.close(fig)
    fig = plot_error_vs_outlier([1, 10], {"per_tensor": [0.02, 0.03], "tile_1x128": [0.02, 0.02]})
    assert len(fig.axes[0].lines) == 2
    plt.close(fig)
