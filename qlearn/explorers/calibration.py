"""Explore calibration: an observer's clipping range drawn over a real activation histogram.

``plot_range(x, ...)`` draws the histogram of activations ``x`` with the range chosen by one
observer (the static figure); ``explore(x)`` wraps it in controls (observer, percentile, bits).
"""

from __future__ import annotations

import numpy as np

from qlearn import calibration

__all__ = ["range_summary", "plot_range", "explore"]

HIST_BINS = 200


def range_summary(x, method: str = "percentile", p: float = calibration.DEFAULT_PERCENTILE,
                  bits: int = 8) -> dict:
    """The numbers the figure shows for activations ``x: (tokens, features)`` (symmetric quantization).

    Returns {"range": Range, "sqnr_db": SQNR of x after fake quantization, "clipped": fraction of x
    outside the range, "absmax": max |x|}.
    """
    x = np.asarray(x, dtype=np.float64)
    r = calibration.observe(x, method, bits, True, p)
    x_hat = calibration.fake_quantize_range(x, r, bits)
    return {"range": r, "sqnr_db": calibration.sqnr_db(x, x_hat),
            "clipped": float(np.mean((x < r.lo) | (x > r.hi))), "absmax": float(np.abs(x).max())}


def plot_range(x, method: str = "percentile", p: float = calibration.DEFAULT_PERCENTILE, bits: int = 8,
               ax=None, title: str = "activations"):
    """Histogram (log counts) of ``x: (tokens, features)`` with the observer's clipping range."""
    import matplotlib.pyplot as plt

    info = range_summary(x, method, p, bits)
    r = info["range"]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.4))
    flat = np.asarray(x, dtype=np.float64).ravel()
    ax.hist(flat, bins=HIST_BINS, color="#4c72b0", alpha=0.85, label=title)
    ax.axvspan(r.lo, r.hi, color="#dd8452", alpha=0.15)
    ax.axvline(r.lo, color="#c44e52", lw=2, label=f"{method} range")
    ax.axvline(r.hi, color="#c44e52", lw=2)
    ax.set_yscale("log")
    ax.set_xlabel("activation value")
    ax.set_ylabel("count (log)")
    extra = f" p={p}" if method == "percentile" else ""
    ax.set_title(f"{method}{extra}, {bits}-bit symmetric: range ±{r.hi:.3g} of max |x| {info['absmax']:.3g}, "
                 f"{100 * info['clipped']:.3f}% clipped, SQNR {info['sqnr_db']:.2f} dB", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    return ax


def explore(x, title: str = "activations"):
    """Controls for observer, percentile and bits over :func:`plot_range` (an ipywidgets ``interactive``)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(method, p, bits):
        plot_range(x, method, p, bits, title=title)
        plt.show()

    return widgets.interactive(
        show,
        method=widgets.Dropdown(options=list(calibration.OBSERVERS), value="percentile", description="observer"),
        p=widgets.FloatSlider(value=calibration.DEFAULT_PERCENTILE, min=99.0, max=100.0, step=0.01,
                              description="percentile", readout_format=".2f"),
        bits=widgets.IntSlider(value=8, min=2, max=8, description="bits"))
