"""Figures and a widget for the GGUF k-quants chapter: one block, byte by byte.

``plot_block(x, qtype, row, block)`` quantizes ``x`` with :func:`qlearn.kquants.quantize`, then
draws the block's bytes coloured by field, its codes and sub-block scales, and the
reconstruction against the input. ``block_explorer(x)`` wraps it in ipywidgets controls.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from qlearn import kquants

#: one colour per field name (fields of the same role share a colour across types)
FIELD_COLOURS = {"d": "#e15759", "dmin": "#f28e2b", "m": "#f28e2b", "scales": "#edc948",
                 "scales_h": "#edc948", "scales_l": "#b07aa1", "hmask": "#76b7b2", "qh": "#76b7b2",
                 "qs": "#4e79a7", "ql": "#4e79a7"}
BYTES_PER_LINE = 16  # bytes per row of the byte grid (one hexdump line)


def draw_bytes(ax, info: dict, per_line: int = BYTES_PER_LINE) -> None:
    """Draw a block's bytes as a hexdump grid coloured by field. info: from describe_block."""
    raw = info["bytes"]
    owner = np.empty(len(raw), dtype=object)
    for name, a, b, _ in info["fields"]:
        owner[a:b] = name
    nlines = -(-len(raw) // per_line)
    for i, byte in enumerate(raw):
        r, c = divmod(i, per_line)
        ax.add_patch(plt.Rectangle((c, -r - 1), 1, 1, facecolor=FIELD_COLOURS.get(owner[i], "#bab0ac"),
                                   edgecolor="white", linewidth=0.8))
        ax.text(c + 0.5, -r - 0.5, f"{byte:02x}", ha="center", va="center", fontsize=6.5,
                family="monospace")
    handles = [plt.Rectangle((0, 0), 1, 1, color=FIELD_COLOURS.get(n, "#bab0ac")) for n, *_ in info["fields"]]
    labels = [f"{n} [{a}:{b}]" for n, a, b, _ in info["fields"]]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_xlim(0, per_line)
    ax.set_ylim(-nlines, 0)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"{info['qtype']}: {len(raw)} bytes, {per_line} per line (hex)", fontsize=9)


def plot_block(x: np.ndarray, qtype: str = "Q4_K", row: int = 0, block: int = 0, imatrix=None):
    """Quantize x (rows, cols) float32 and draw block ``block`` of row ``row``. Returns the figure."""
    q = kquants.quantize(x, qtype, imatrix)
    info = kquants.describe_block(q, qtype, row, block)
    t = kquants.QTYPES[qtype]
    xb = x[row, block * t.block_size:(block + 1) * t.block_size]
    fig = plt.figure(figsize=(7, 5.4))
    gs = fig.add_gridspec(2, 2, height_ratios=[1.1, 1], width_ratios=[1, 1.25])
    draw_bytes(fig.add_subplot(gs[0, 0]), info)

    ax = fig.add_subplot(gs[0, 1])
    sub = info["sub_size"]
    nsub = t.block_size // sub
    if info["sub_scales"] is not None:
        pos = np.arange(nsub)
        width = 0.4 if info["sub_mins"] is not None else 0.8
        ax.bar(pos - (width / 2 if info["sub_mins"] is not None else 0), info["sub_scales"], width,
               color=FIELD_COLOURS["scales"], label="sub-block scale code")
        if info["sub_mins"] is not None:
            ax.bar(pos + width / 2, info["sub_mins"], width, color=FIELD_COLOURS["dmin"],
                   label="sub-block min code")
        ax.set_xlabel(f"sub-block ({sub} weights each)")
        ax.legend(fontsize=8)
        title = f"d = {info['d']:.4g}" + ("" if info["dmin"] is None else f", dmin = {info['dmin']:.4g}")
    else:
        ax.hist(info["codes"], bins=np.arange(info["codes"].min() - 0.5, info["codes"].max() + 1.5),
                color=FIELD_COLOURS["qs"])
        ax.set_xlabel("code")
        title = f"one scale per block: d = {info['d']:.4g}" + (
            "" if info["dmin"] is None else f", m = {info['dmin']:.4g}")
    ax.set_title(title, fontsize=9)

    ax = fig.add_subplot(gs[1, :])
    idx = np.arange(t.block_size)
    ax.plot(idx, xb, ".", color="0.4", ms=4, label="input x")
    ax.step(idx, info["values"], where="mid", color=FIELD_COLOURS["d"], lw=1, label="dequantized")
    for s in range(1, nsub):
        ax.axvline(s * sub - 0.5, color="0.85", lw=0.8, zorder=0)
    rmse = float(np.sqrt(np.mean((info["values"] - xb) ** 2)))
    ax.set_title(f"{qtype} block {block} of row {row}: {t.bits_per_weight:.4g} bits/weight, "
                 f"RMSE {rmse:.4f}", fontsize=9)
    ax.set_xlabel("element in block")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def block_explorer(x: np.ndarray, imatrix=None):
    """ipywidgets explorer: pick a type, a row and a block of x (rows, cols) float32."""
    import ipywidgets as w

    types = [n for n in kquants.QTYPES if x.shape[1] % kquants.QTYPES[n].block_size == 0]

    def show(qtype="Q4_K", row=0, block=0):
        nb = x.shape[1] // kquants.QTYPES[qtype].block_size
        plot_block(x, qtype, row, min(block, nb - 1), imatrix)
        plt.show()

    return w.interactive(show, qtype=w.Dropdown(options=types, value="Q4_K"),
                         row=w.IntSlider(0, 0, x.shape[0] - 1),
                         block=w.IntSlider(0, 0, x.shape[1] // 32 - 1))
