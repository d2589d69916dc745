"""Figures and the bit explorer for the number-formats chapter (qlearn.formats).

- :func:`plot_layouts` draws the bit fields of every layout in :data:`qlearn.formats.LAYOUTS`;
- :func:`bit_rows` / :func:`plot_bits` show one value rounded to each format, bit by bit;
- :func:`relative_error` / :func:`plot_relative_error` give rounding error against magnitude;
- :func:`explorer` is the ipywidgets version of :func:`plot_bits` (type a value, see the bits).
"""

from __future__ import annotations

import numpy as np

from qlearn import formats as F

__all__ = ["FIELD_COLOURS", "bit_rows", "plot_bits", "plot_layouts", "relative_error",
           "plot_relative_error", "explorer", "FLOAT_FORMATS"]

FLOAT_FORMATS = ("fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2")
FIELD_COLOURS = {"sign": "#e4877d", "exponent": "#7fa7d9", "mantissa": "#9fd18b"}
OTHER_COLOUR = "#d8c27a"   # integer magnitude / lookup index fields


def _parse(value) -> np.float32:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"expected a number such as 0.1, 1e-5, inf or nan, got {value!r}") from None
    return np.float32(value)


def bit_rows(value, formats=FLOAT_FORMATS) -> list[dict]:
    """``value`` (float or numeric string) rounded to each format.

    Returns one dict per format: name, bits (fields separated by spaces), stored value, kind,
    absolute error and relative error against the float32 input (nan where undefined).
    """
    x = _parse(value)
    rows = []
    for name in formats:
        f = F.spec(name)
        r = F.fields(x, name)
        e, m = f.exponent_bits, f.mantissa_bits
        spaced = f"{r.bits[0]} {r.bits[1:1 + e]} {r.bits[1 + e:]}"
        with np.errstate(invalid="ignore", divide="ignore"):
            err = abs(np.float64(r.value) - np.float64(x))
            rel = err / abs(np.float64(x)) if x != 0 else (0.0 if err == 0 else np.inf)
        rows.append({"format": name, "bits": spaced, "value": r.value, "kind": r.kind,
                     "abs_error": float(err), "rel_error": float(rel)})
    return rows


def _draw_fields(ax, y, segments, bits=None, cell=1.0):
    """Boxes for one row: segments = ((label, n, colour), ...); bits = '0101...' to print inside."""
    x0 = 0
    for label, n, colour in segments:
        for i in range(n):
            ax.add_patch(_rect((x0 + i) * cell, y, cell, 0.8, colour))
            if bits is not None:
                ax.text((x0 + i + 0.5) * cell, y + 0.4, bits[x0 + i], ha="center", va="center",
                        fontsize=8, family="monospace")
        if bits is None:
            text = f"{label} {n}" if n >= 2 + len(label) // 2 else str(n)
            ax.text((x0 + n / 2) * cell, y + 0.4, text, ha="center", va="center", fontsize=8)
        x0 += n
    return x0


def _rect(x, y, w, h, colour):
    import matplotlib.patches as mpatches
    return mpatches.Rectangle((x, y), w, h, facecolor=colour, edgecolor="white", linewidth=0.6)


def plot_layouts(ax=None):
    """Bit-field diagram of FP32, FP16, BF16, FP8 E4M3/E5M2, INT8, INT4, NF4 (one row each)."""
    import matplotlib.pyplot as plt

    layouts = F.LAYOUTS
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.45 * len(layouts) + 0.6))
    for i, lay in enumerate(layouts):
        y = len(layouts) - 1 - i
        segs = [(lab, n, FIELD_COLOURS.get(lab, OTHER_COLOUR)) for lab, n in lay.fields]
        end = _draw_fields(ax, y, segs, cell=1.0)
        ax.text(-0.5, y + 0.4, f"{lay.name} ({lay.bits} bits)", ha="right", va="center", fontsize=9)
        ax.text(end + 0.5, y + 0.4, lay.description, ha="left", va="center", fontsize=8, color="0.3")
    ax.set_xlim(-9, 52)
    ax.set_ylim(-0.3, len(layouts))
    ax.axis("off")
    handles = [_rect(0, 0, 1, 1, c) for c in (*FIELD_COLOURS.values(), OTHER_COLOUR)]
    # below the rows, so it covers none of them
    ax.legend(handles, [*FIELD_COLOURS, "integer / index"], loc="upper center",
              bbox_to_anchor=(0.5, 0.0), fontsize=8, ncol=4, frameon=False)
    ax.set_title("Bit layouts, most significant bit on the left (one box = one bit)")
    return ax


def plot_bits(value, formats=FLOAT_FORMATS, ax=None):
    """Draw ``value`` rounded to each format: coloured bit boxes, stored value, relative error."""
    import matplotlib.pyplot as plt

    rows = bit_rows(value, formats)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 0.7))
    for i, row in enumerate(rows):
        f = F.spec(row["format"])
        y = len(rows) - 1 - i
        segs = [("sign", 1, FIELD_COLOURS["sign"]), ("exponent", f.exponent_bits, FIELD_COLOURS["exponent"]),
                ("mantissa", f.mantissa_bits, FIELD_COLOURS["mantissa"])]
        end = _draw_fields(ax, y, segs, bits=row["bits"].replace(" ", ""))
        ax.text(-0.5, y + 0.4, row["format"], ha="right", va="center", fontsize=9)
        ax.text(end + 0.5, y + 0.4, f"= {row['value']:.8g}  ({row['kind']}, rel. error {row['rel_error']:.2e})",
                ha="left", va="center", fontsize=8)
    ax.set_xlim(-6, 58)
    ax.set_ylim(-0.3, len(rows))
    ax.axis("off")
    ax.set_title(f"{float(_parse(value)):.9g} (as float32) stored in each format")
    return ax


def relative_error(fmt: str, lo: float = 1e-12, hi: float = 1e6, n_bins: int = 400,
                   per_bin: int = 200):
    """Worst relative rounding error |round_to(x) - x| / |x| per magnitude bin.

    ``n_bins`` log-spaced bins cover [lo, hi]; each holds ``per_bin`` log-spaced float32 samples.
    Returns (centres: (n_bins,) float64, worst: (n_bins,) float64); overflow to inf gives inf.
    """
    if not (0 < lo < hi):
        raise ValueError(f"need 0 < lo < hi, got lo={lo}, hi={hi}")
    x = np.geomspace(lo, hi, n_bins * per_bin).astype(np.float32)
    r = F.round_to(x, fmt).astype(np.float64)
    x64 = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        rel = np.abs(r - x64) / x64
    rel = np.where(np.isinf(r), np.inf, rel)
    worst = rel.reshape(n_bins, per_bin).max(axis=1)
    centres = np.sqrt(x64.reshape(n_bins, per_bin)[:, 0] * x64.reshape(n_bins, per_bin)[:, -1])
    return centres, worst


def plot_relative_error(formats=("fp16", "bf16", "fp8_e4m3", "fp8_e5m2"), lo=1e-12, hi=1e6, ax=None):
    """Worst relative rounding error against magnitude for each format (log-log).

    Flat stretch: the normal range, error <= epsilon/2. Left: subnormals (error grows as the
    spacing stays fixed), then everything rounds to 0 (error 1). Right: past max, inf (drawn at
    the top edge) or, for e4m3fn, saturation to 448 (error rising towards 1).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    top = 10.0
    for name in formats:
        f = F.spec(name)
        x, worst = relative_error(name, lo, hi)
        worst = np.where(np.isinf(worst), top, worst)
        line, = ax.loglog(x, np.maximum(worst, 1e-12), lw=1.4, label=f"{name} (eps/2 = {f.epsilon / 2:.2g})")
        c = line.get_color()
        for edge, ls in ((f.min_normal, ":"), (f.max, "--")):
            if lo < edge < hi:
                ax.axvline(edge, color=c, ls=ls, lw=0.8)
    ax.set_ylim(1e-4, top * 1.5)
    ax.set_xlabel("|x|  (dotted: smallest normal, dashed: max)")
    ax.set_ylabel("worst relative error")
    ax.set_title("Rounding error against magnitude (inf drawn at 10)")
    ax.legend(loc="lower left", fontsize=8)
    return ax


def explorer(value: str = "0.1", formats=FLOAT_FORMATS):
    """ipywidgets bit explorer: type a value, see its bits and rounding error in each format."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(value):
        try:
            rows = bit_rows(value, formats)
        except ValueError as e:
            print(e)
            return
        for row in rows:
            print(f"{row['format']:>9}  {row['bits']:<34} = {row['value']:<14.8g} "
                  f"{row['kind']:<9} rel. error {row['rel_error']:.2e}")
        plot_bits(value, formats)
        plt.show()

    return widgets.interactive(show, value=widgets.Text(value=value, description="value",
                                                        continuous_update=False))
