"""Apply the core (#11) notebook edits to chapters 3, 5, 6 and 7 (idempotent: run once).

New cells are inserted next to an anchor cell found by its text, so the script also works on
reformatted notebooks; existing cells are changed only where a grid was written out by hand
(chapter 5's int8 cell) or an old keyword name would print a DeprecationWarning (chapter 7).
Usage: python notes/core_nb_edits.py   (then re-execute chapters 3, 5 and 6)
"""

import sys

import nbformat

MARK = "core-11"  # metadata tag on every inserted cell, so a second run inserts nothing


def _new(kind, source, **meta):
    cell = (nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell)(source)
    cell.metadata.update(meta)
    cell.metadata["tags"] = [MARK]
    return cell


def _find(nb, text):
    hits = [i for i, c in enumerate(nb.cells) if text in c.source]
    if len(hits) != 1:
        sys.exit(f"anchor {text!r}: {len(hits)} cells")
    return hits[0]


def _insert(path, anchor, cells, before=False):
    nb = nbformat.read(path, 4)
    if any(MARK in c.metadata.get("tags", []) and c.source == cells[0].source for c in nb.cells):
        return
    i = _find(nb, anchor) + (0 if before else 1)
    nb.cells[i:i] = cells
    nbformat.write(nb, path)


def _replace(path, old, new):
    nb = nbformat.read(path, 4)
    for c in nb.cells:
        if old in c.source:
            c.source = c.source.replace(old, new)
    nbformat.write(nb, path)


CH3_MD = r'''### Two grids called "symmetric"

"Symmetric" names two different grids in the tools this book reproduces, and qlearn gives each
its own name in `uniform.MAPPINGS`:

- `"symmetric"`, the grid above (PyTorch's symmetric observers, SmoothQuant, LLM.int8()):
  codes $-(2^{b-1}-1) \ldots 2^{b-1}-1$, zero point $0$, $s = \max|x| / (2^{b-1}-1)$. Both
  $\pm\max|x|$ are levels; one of the $2^b$ codes is never used.
- `"symmetric_offset"`, the reference GPTQ's `sym=True` (chapters 5 and 6): all codes
  $0 \ldots 2^b-1$, the fixed zero point $2^{b-1}$ and $s = 2\max|x| / (2^b-1)$. Its $2^b$
  levels run from $-2^{b-1}s$ to $(2^{b-1}-1)s$, so the grid is not symmetric about 0 and
  $\pm\max|x|$ fall half a step from the nearest level.

The cell measures both at 4 bits: where the extremes land (error in steps $s$) and the SQNR on
Gaussian data.'''

CH3_CODE = '''w = uniform.sample_distribution("gaussian", 100_000, seed=11)
ends = np.array([-1.0, 1.0], np.float32) * np.abs(w).max()
print(f"{'mapping':17s} {'codes':>6s} {'zero':>4s} {'levels':>6s} "
      f"{'err at -max':>11s} {'err at +max':>11s} {'SQNR dB':>7s}")
for m in ("symmetric", "symmetric_offset"):
    lo, hi = uniform.code_range(4, mapping=m)
    s, z = uniform.choose_qparams(w, 4, mapping=m)
    q = uniform.quantize_affine(ends, s, z, 4, mapping=m)
    err = (uniform.dequantize(q) - ends) / s  # in steps
    sq = sqnr_db(w, uniform.fake_quantize(w, 4, mapping=m))
    print(f"{m:17s} {lo:>3d}..{hi:<2d} {int(z[0]):>4d} {hi - lo + 1:>6d} "
          f"{err[0]:>9.2f} s {err[1]:>9.2f} s {sq:7.2f}")'''

CH3_FIG = '''x = np.linspace(-1, 1, 4001, dtype=np.float32)
fig, axes = plt.subplots(1, 2, figsize=(7, 3), sharey=True)
for ax, m in zip(axes, ("symmetric", "symmetric_offset")):
    s, _ = uniform.choose_qparams(x, 4, mapping=m)
    err = (uniform.fake_quantize(x, 4, mapping=m) - x) / s[0]
    ax.plot(x, err, lw=1, color="#4c72b0")
    ax.axhline(0.5, color="#c44e52", lw=0.8, ls="--")
    ax.axhline(-0.5, color="#c44e52", lw=0.8, ls="--")
    ax.set_title(f'"{m}", 4 bits', fontsize=10)
    ax.set_xlabel("x / max|x|", fontsize=10)
axes[0].set_ylabel("error (steps)", fontsize=10)
fig.tight_layout()
plt.show()'''

CH3_FIG_META = {"mystnb": {"figure": {
    "caption": "Quantization error, in steps, of the two 4-bit grids called symmetric over "
               "[-max, max]: the restricted grid stays within half a step everywhere; the "
               "offset grid of the GPTQ reference reaches half a step at both ends.",
    "name": "fig-ch03-two-symmetric"},
    "image": {"alt": "Two panels of sawtooth error curves between -0.5 and 0.5 steps; in the "
                     "right panel the error at x = +max and x = -max sits at the half-step "
                     "lines."}}}

CH5_MD = r'''**Which grid.** `gptq.rtn_quantize` is the reference GPTQ quantizer, a short wrapper of
`qlearn.uniform`: `sym=True` is the mapping `"symmetric_offset"` and `sym=False` the mapping
`"asymmetric"` (rules printed below). The "sym" rows of this chapter are therefore not chapter 3's
restricted `"symmetric"` grid; {doc}`03_uniform_quantization` compares the two.'''

CH5_CODE = '''import textwrap

from qlearn import uniform

for m in ("symmetric_offset", "asymmetric"):
    print(textwrap.fill(f"{m}: {uniform.MAPPINGS[m].rule}", 79,
                        subsequent_indent="  "))'''

CH5_OLD = '''def int8_per_row(a):
    scale = a.abs().amax(1, keepdim=True).clamp_min(1e-8) / 127
    return torch.round(a / scale).clamp(-127, 127), scale
'''
CH5_NEW = '''from qlearn import uniform  # the "symmetric" int8 grid, -127..127


def int8_per_row(a):
    q = uniform.quantize(a, 8, block_size=(1, a.shape[1]))
    return torch.from_numpy(q.codes).float(), torch.from_numpy(q.scale)
'''
CH5_OLD2 = '''    xs = torch.round(x / x_static_scale).clamp(-127, 127) * x_static_scale
'''
CH5_NEW2 = '''    xs = torch.from_numpy(uniform.quantize_affine(
        x, float(x_static_scale), 0, 8).dequantize())
'''

CH6_MD = r'''GPTQ rounds each column on the reference quantizer's grid, the same `qlearn.uniform` core
as RTN in {doc}`05_weight_only_ptq`: mapping `"symmetric_offset"` for `sym=True` (codes
$0 \ldots 2^b-1$, zero point $2^{b-1}$, $s = 2\max|w|/(2^b-1)$) and `"asymmetric"` for
`sym=False`. Only the numba column sweep rounds on its own, and a test checks it against the
readable torch sweep, which calls the core, bit for bit.'''

if __name__ == "__main__":
    ch3, ch5 = "notebooks/03_uniform_quantization.ipynb", "notebooks/05_weight_only_ptq.ipynb"
    ch6, ch7 = "notebooks/06_gptq.ipynb", "notebooks/07_awq.ipynb"
    _insert(ch3, "The symmetric grid wastes part of its range", [
        _new("md", CH3_MD), _new("code", CH3_CODE), _new("code", CH3_FIG, **CH3_FIG_META)],
        before=True)
    _insert(ch5, "## Three granularities of round-to-nearest",
            [_new("md", CH5_MD), _new("code", CH5_CODE)])
    _replace(ch5, CH5_OLD, CH5_NEW)
    _replace(ch5, CH5_OLD2, CH5_NEW2)
    _insert(ch6, "## OBQ: quantize one weight", [_new("md", CH6_MD)], before=True)
    _replace(ch7, "w_bit=", "bits=")
