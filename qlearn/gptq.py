"""GPTQ: post-training weight quantization with second-order error feedback.

Read this module top to bottom:

1. :class:`Hessian` / :func:`hessian` accumulate ``H = 2/nsamples * X^T X`` from calibration inputs
   exactly as the reference (IST-DASLab/gptq) does, including its running rescale.
2. :func:`find_params` is the reference min/max quantizer for one group of weights, and
   :func:`rtn_quantize` applies it with no error feedback (round-to-nearest, "RTN").
3. :func:`gptq_quantize` is the algorithm: quantize columns left to right; after each column,
   spread its rounding error over the not-yet-quantized columns using the inverse Hessian, so
   the layer's *output* error ``||X W^T - X Q^T||`` stays small. Three tricks make it fast:
   a fixed column order for every row, lazy updates in blocks of ``blocksize`` columns, and a
   Cholesky factor of ``H^-1`` instead of repeated inverse updates.
4. :func:`pack_autogptq` / :func:`unpack_autogptq` write and read the int32-packed tensors of the
   AutoGPTQ / transformers GPTQ checkpoint layout; :func:`save_autogptq` stores them with safetensors.

Conventions follow AutoGPTQ: ``scales``/``zeros`` are ``(out_features, n_groups)``, column ``k`` is
the k-th group *created during the sweep* (in permuted order under act-order), and ``g_idx[j]`` says
which column input channel ``j`` uses. The dequantized weight is always
``Q = scales[:, g_idx] * (codes - zeros[:, g_idx])``.

The reference keeps a quirk we copy so that codes match ("Q2" in the oracle README): a group's
scale and zero are computed from the weights *as stored outside the current block*, i.e. without
the error-feedback updates made inside the block so far. With ``group_size == blocksize`` this is
the same as using fresh weights; with smaller groups the 2nd, 3rd, ... group of a block sees
stale weights. ``blocksize == group_size`` gives fresh params (how the chapter measures the quirk).

The column sweep has two backends that agree bit for bit (tested): ``"torch"``, a line-by-line
readable version of the reference loop, and ``"numba"`` (default), which runs the same arithmetic
row by row in a compiled kernel (each output row's sweep is independent of the others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import torch

from qlearn import uniform, validate

__all__ = [
    "Hessian", "hessian", "GPTQResult", "find_params", "rtn_quantize", "gptq_quantize",
    "dequantize", "relative_output_error", "synthetic_layer", "pack_autogptq",
    "unpack_autogptq", "save_autogptq", "load_autogptq",
]

MIN_BITS, MAX_BITS = 2, 8        # codes are stored in uint8 and packed into int32 words
DEFAULT_BLOCKSIZE = 128          # the reference's lazy-batch width; codes match it only at 128
DEFAULT_PERCDAMP = 0.01          # damping = 1 % of the mean diagonal of H, as in the paper
PACK_WORD_BITS = 32              # AutoGPTQ packs codes into int32 words
PACK_CHUNK = 32                  # 32 codes always fill a whole number of words (32*bits/32 = bits)


def _as_float32_tensor(x, name: str) -> torch.Tensor:
    return validate.float_tensor(x, name, finite=False, allow_empty=True)


def _check_finite(x: torch.Tensor, name: str) -> None:
    if torch.isfinite(x.sum()):   # any NaN/Inf makes the sum non-finite (overflow falls through)
        return
    if not torch.isfinite(x).all():
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite, got {n_bad} NaN/Inf entries "
                         f"(check the layer or calibration data that produced it)")


# --------------------------------------------------------------------------------------------
# 1. The Hessian of the layer-wise objective
# --------------------------------------------------------------------------------------------

class Hessian:
    """Running ``H = 2/nsamples * sum_x x x^T`` over calibration batches (the reference's ``add_batch``).

    A 2-D batch ``(n_tokens, in_features)`` counts as one sample and a 3-D batch
    ``(batch, seq, in_features)`` as ``batch`` samples, as in the reference; before adding a batch
    the running sum is rescaled by ``nsamples / (nsamples + new)``. Any positive rescale of H
    leaves GPTQ's result unchanged up to rounding.

    Args:
        in_features: number of input channels of the layer.
    """

    def __init__(self, in_features: int):
        if int(in_features) <= 0:
            raise ValueError(f"in_features must be positive, got {in_features}")
        self.in_features = int(in_features)
        self.nsamples = 0
        self._H = torch.zeros(self.in_features, self.in_features, dtype=torch.float32)

    def add_batch(self, X) -> None:
        """Add calibration inputs ``X: (n_tokens, in) or (batch, seq, in)`` float."""
        X = _as_float32_tensor(X, "X")
        if X.dim() == 2:
            X = X.unsqueeze(0)
        if X.dim() != 3 or X.shape[-1] != self.in_features:
            raise ValueError(f"X must be (n_tokens, {self.in_features}) or (batch, seq, {self.in_features}), "
                             f"got shape {tuple(X.shape)}")
        if X.shape[0] * X.shape[1] == 0:
            raise ValueError(f"empty calibration batch: got X of shape {tuple(X.shape)} "
                             f"(pass at least one token)")
        _check_finite(X, "X")
        new = X.shape[0]
        inp = X.reshape(-1, X.shape[-1]).t()                       # (in, n_tokens)
        self._H *= self.nsamples / (self.nsamples + new)
        self.nsamples += new
        inp = math.sqrt(2 / self.nsamples) * inp
        self._H += inp.matmul(inp.t())

    @property
    def H(self) -> torch.Tensor:
        """``(in_features, in_features) float32``; raises if no batch was added."""
        if self.nsamples == 0:
            raise ValueError("empty calibration: no batch was added to the Hessian "
                             "(call add_batch with calibration inputs first)")
        return self._H


def hessian(X) -> torch.Tensor:
    """``H = 2/nsamples * X^T X`` for ``X: (n_tokens, in) float32`` (one sample) or ``(batch, seq, in)``.

    Returns ``(in, in) float32``, identical to one reference ``add_batch`` call.
    """
    X = _as_float32_tensor(X, "X")
    if X.dim() not in (2, 3) or X.shape[-1] == 0:
        raise ValueError(f"X must be (n_tokens, in_features) or (batch, seq, in_features), got {tuple(X.shape)}")
    acc = Hessian(X.shape[-1])
    acc.add_batch(X)
    return acc.H


# --------------------------------------------------------------------------------------------
# 2. The min/max quantizer and round-to-nearest
# --------------------------------------------------------------------------------------------

def _mapping(sym: bool) -> str:
    """The :mod:`qlearn.uniform` grid of the reference quantizer."""
    return "symmetric_offset" if sym else "asymmetric"


def find_params(W: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and zero of the reference quantizer for ``W: (rows, cols) float32``.

    A short wrapper of :func:`qlearn.uniform.choose_qparams` with one block per row and the
    mapping ``"symmetric_offset"`` (sym) or ``"asymmetric"``: the range always contains 0
    (``xmin = min(row min, 0)``, ``xmax = max(row max, 0)``); symmetric uses
    ``xmax = max(|xmin|, xmax)``, ``xmin = -xmax`` (when ``xmin < 0``) and the fixed zero
    ``2^(bits-1)``; asymmetric rounds ``-xmin/scale``. An all-zero row gets the range [-1, 1].
    Returns ``scale, zero: (rows,) float32``.
    """
    W = _as_float32_tensor(W, "W")
    if W.dim() != 2 or W.shape[0] == 0 or W.shape[1] == 0:
        raise ValueError(f"W must be a non-empty (rows, cols) matrix, got shape {tuple(W.shape)}")
    bits = validate.bits(bits, lo=MIN_BITS, hi=MAX_BITS)
    sym = validate.flag(sym, "sym")
    scale, zero = uniform.choose_qparams(W.numpy(), bits, (1, W.shape[1]), _mapping(sym))
    return torch.from_numpy(scale[:, 0]), torch.from_numpy(zero[:, 0].astype(np.float32))


def _codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
           mapping: str) -> torch.Tensor:
    """``clamp(round(w/scale) + zero, 0, 2^bits - 1)`` per row via :func:`uniform.quantize_affine`.

    ``w: (rows, cols)``, ``scale, zero: (rows, 1)`` float32; returns ``(rows, cols)`` uint8.
    """
    q = uniform.quantize_affine(w.numpy(), scale.numpy(), zero.numpy(), bits,
                                block_size=(1, w.shape[1]), mapping=mapping)
    return torch.from_numpy(q.codes)


@dataclass
class GPTQResult:
    """A quantized linear weight in AutoGPTQ's convention.

    Attributes:
        codes: (out, in) uint8 integer codes, original column order.
        scales: (out, n_groups) float32.
        zeros: (out, n_groups) float32 (integers stored as floats, as upstream).
        g_idx: (in,) int32 group column used by each input channel.
        perm: (in,) int64 act-order permutation (column order of the sweep) or None.
        Q: (out, in) float32 dequantized weight ``scales[:, g_idx] * (codes - zeros[:, g_idx])``.
        loss: the reference's internal loss ``sum((w - q)^2 / Hinv[i,i]^2) / 2`` (None for RTN).
        bits, group_size, sym: the settings used.

    The project's result convention: :attr:`qtensor` is the same weight as a
    :class:`qlearn.uniform.QTensor` (codes, scale, zero point, block size, mapping
    ``"symmetric_offset"`` or ``"asymmetric"``), and :meth:`dequantize` takes no argument.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    perm: torch.Tensor | None
    Q: torch.Tensor
    loss: float | None
    bits: int
    group_size: int
    sym: bool

    @property
    def mapping(self) -> str:
        """The grid's name in :data:`qlearn.uniform.MAPPINGS`."""
        return _mapping(self.sym)

    @property
    def qtensor(self) -> uniform.QTensor:
        """The codes, scales and zero points as a :class:`qlearn.uniform.QTensor` (numpy),
        one block per group of ``group_size`` consecutive columns. Groups that are not
        contiguous (act_order without static_groups) have no block form: ValueError."""
        out, cols = self.codes.shape
        n_groups = self.scales.shape[1]
        gs = cols // n_groups
        if cols % n_groups or not torch.equal(self.g_idx.long(), torch.arange(cols) // gs):
            raise ValueError("expected contiguous groups for a QTensor, got a g_idx that "
                             "permutes columns (act_order without static_groups); use "
                             ".dequantize() or gptq.dequantize(codes, scales, zeros, g_idx)")
        return uniform.QTensor(self.codes.numpy(), self.scales.numpy().astype(np.float32),
                               self.zeros.numpy().astype(np.int32), self.bits, False, (1, gs),
                               (out, cols), self.mapping)

    def dequantize(self) -> torch.Tensor:
        """(out, in) float32 ``scales[:, g_idx] * (codes - zeros[:, g_idx])``: ``Q``, bit for bit."""
        return dequantize(self.codes, self.scales, self.zeros, self.g_idx)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               g_idx: torch.Tensor) -> torch.Tensor:
    """``Q = scales[:, g_idx] * (codes - zeros[:, g_idx])``: (out, in) float32."""
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8 or codes.dim() != 2 \
            or codes.numel() == 0:
        raise validate.ArgumentTypeError(f"codes must be a non-empty (out, in) uint8 tensor, got "
                                         f"{getattr(codes, 'dtype', type(codes).__name__)} "
                                         f"{tuple(getattr(codes, 'shape', ()))}")
    scales = validate.float_tensor(scales, "scales", ndim=2, dtypes="float32")
    zeros = validate.float_tensor(zeros, "zeros", ndim=2, dtypes="float32")
    if not isinstance(g_idx, torch.Tensor) or g_idx.dtype not in (torch.int32, torch.int64) \
            or g_idx.shape != (codes.shape[1],):
        raise validate.ArgumentTypeError(f"g_idx must be an int32 tensor of shape "
                                         f"({codes.shape[1]},), got "
                                         f"{getattr(g_idx, 'dtype', type(g_idx).__name__)}")
    if scales.shape[0] != codes.shape[0] or zeros.shape != scales.shape \
            or int(g_idx.min()) < 0 or int(g_idx.max()) >= scales.shape[1]:
        raise ValueError(f"scales and zeros must be (out, n_groups) = ({codes.shape[0]}, n) with "
                         f"g_idx in [0, n), got {tuple(scales.shape)}, {tuple(zeros.shape)} and "
                         f"g_idx {int(g_idx.min())}..{int(g_idx.max())}")
    g = g_idx.long()
    out, cols = codes.shape
    n_groups = scales.shape[1]
    if cols % n_groups == 0 and torch.equal(g, torch.arange(cols) // (cols // n_groups)):
        # contiguous groups: broadcast instead of gathering (same float operations, same bits)
        c = codes.to(torch.float32).view(out, n_groups, cols // n_groups)
        return (scales[:, :, None] * (c - zeros[:, :, None])).view(out, cols)
    return scales[:, g] * (codes.to(torch.float32) - zeros[:, g])


def _validate_settings(W: torch.Tensor, bits, group_size) -> None:
    if W.dim() != 2 or W.shape[0] == 0 or W.shape[1] == 0:
        raise ValueError(f"W must be a non-empty (out_features, in_features) matrix, got shape {tuple(W.shape)}")
    validate.bits(bits, "bits", MIN_BITS, MAX_BITS)
    validate.group_size(group_size, W.shape[1])
    _check_finite(W, "W")


def rtn_quantize(W, bits: int = 4, group_size: int = -1, sym: bool = True) -> GPTQResult:
    """Round-to-nearest with the reference quantizer, per group of the unmodified weight.

    Args:
        W: (out_features, in_features) float32.
        bits: 2..8. group_size: -1 (per output channel) or a divisor of in_features. sym: symmetric grid.
    Returns:
        :class:`GPTQResult` with ``perm=None`` and ``loss=None``.
    """
    W = _as_float32_tensor(W, "W")
    _validate_settings(W, bits, group_size)
    bits, group_size = int(bits), int(group_size)
    sym = validate.flag(sym, "sym")
    out, cols = W.shape
    gs = cols if group_size == -1 else group_size
    scale, zero = uniform.choose_qparams(W.numpy(), bits, (1, gs), _mapping(sym))
    q = uniform.quantize_affine(W.numpy(), scale, zero, bits, block_size=(1, gs),
                                mapping=_mapping(sym))
    codes = torch.from_numpy(q.codes)
    scales, zeros = torch.from_numpy(scale), torch.from_numpy(zero.astype(np.float32))
    g_idx = (torch.arange(cols) // gs).to(torch.int32)
    return GPTQResult(codes, scales, zeros, g_idx, None, dequantize(codes, scales, zeros, g_idx),
                      None, bits, group_size, bool(sym))


def relative_output_error(X, W, Q, *, gram=None) -> float:
    """``||X W^T - X Q^T||_F^2 / ||X W^T||_F^2`` in float64; X (n, in), W/Q (out, in).

    Pass ``gram = X^T X`` ((in, in) float64) instead of X to reuse it across many Q (same value,
    computed as ``sum(D * (D @ gram))`` with ``D = W - Q``).
    """
    def f64(a, name):
        return validate.float_array(a, name, ndim=2, dtype=np.float64)

    W, Q = f64(W, "W"), f64(Q, "Q")
    if Q.shape != W.shape:
        raise ValueError(f"Q must have W's shape {W.shape}, got {Q.shape}")
    D = W - Q
    if gram is not None:
        G = f64(gram, "gram")
        if G.shape != (W.shape[1],) * 2:
            raise ValueError(f"gram must be ({W.shape[1]}, {W.shape[1]}), got {G.shape}")
        return float(np.sum(D * (D @ G)) / np.sum(W * (W @ G)))
    X = f64(X, "X")
    if X.shape[1] != W.shape[1]:
        raise ValueError(f"X must have in_features = {W.shape[1]} columns, got {X.shape}")
    Y = X @ W.T
    return float(np.sum((X @ D.T) ** 2) / np.sum(Y ** 2))


# --------------------------------------------------------------------------------------------
# 3. GPTQ
# --------------------------------------------------------------------------------------------

def _inverse_hessian_cholesky(H: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of ``H^-1`` (``H^-1 = U^T U``), via the reference's three calls."""
    L, info = torch.linalg.cholesky_ex(H)
    if info == 0:
        Hinv = torch.cholesky_inverse(L)
        U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
    if info != 0:
        raise ValueError("the damped Hessian is not positive definite (Cholesky failed): use more "
                         "calibration tokens than in_features, or a larger percdamp (e.g. 0.1)")
    return U


def _sweep_block_torch(W1, Hinv1, scale_tab, zero_tab, col_group, maxq, codes1, Err1, losses1):
    """Reference column loop over one block. W1: (out, count) float32, modified in place."""
    bits = int(maxq).bit_length()
    for i in range(W1.shape[1]):
        w = W1[:, i]
        d = Hinv1[i, i]
        scale, zero = scale_tab[col_group[i]], zero_tab[col_group[i]]
        codes1[:, i] = _codes(w[:, None], scale[:, None], zero[:, None], bits, "asymmetric")[:, 0]
        c = codes1[:, i].to(torch.float32)
        q = scale * (c - zero)
        losses1[:, i] = (w - q) ** 2 / d ** 2
        err = (w - q) / d
        W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
        Err1[:, i] = err


@numba.njit(cache=True)   # serial: a numba thread pool next to torch's OpenMP pool thrashed 2 cores
def _sweep_block_numba(W1, Hinv1, scale_tab, zero_tab, col_group, maxq, codes1, Err1, losses1):  # pragma: no cover
    """Same arithmetic as :func:`_sweep_block_torch`, one output row per iteration (rows are independent).

    The numba sweep rounds onto the grid itself (``uniform.quantize_affine`` cannot be called
    from compiled code); ``test_gptq`` checks it against the torch sweep bit for bit."""
    out, count = W1.shape
    for r in range(out):
        w = W1[r]
        for i in range(count):
            g = col_group[i]
            s = scale_tab[g, r]
            z = zero_tab[g, r]
            x = w[i]
            c = np.rint(x / s) + z
            c = min(max(c, np.float32(0.0)), maxq)
            q = s * (c - z)
            d = Hinv1[i, i]
            codes1[r, i] = np.uint8(c)
            diff = x - q
            losses1[r, i] = diff * diff / (d * d)
            e = diff / d
            Err1[r, i] = e
            for j in range(i, count):
                w[j] -= e * Hinv1[i, j]


def gptq_quantize(W, H, bits: int = 4, group_size: int = -1, sym: bool = True,
                  act_order: bool = False, static_groups: bool = False,
                  blocksize: int = DEFAULT_BLOCKSIZE, percdamp: float = DEFAULT_PERCDAMP,
                  *, backend: str = "numba") -> GPTQResult:
    """Quantize a linear weight with GPTQ, matching IST-DASLab/gptq (and AutoGPTQ's bookkeeping).

    Args:
        W: (out_features, in_features) float32 weight (not modified).
        H: (in_features, in_features) float32 Hessian from :func:`hessian` (not modified).
        bits: 2..8. group_size: -1 (one scale per output row) or a divisor of in_features.
        sym: symmetric grid (fixed zero 2^(bits-1)) or asymmetric (rounded zero per group).
        act_order: sweep columns in order of decreasing ``diag(H)`` (largest activations first).
        static_groups: compute every group's scale/zero up front from the unmodified W.
        blocksize: lazy-batch width. percdamp: damping as a fraction of mean(diag H).
        backend: "numba" (fast) or "torch" (the readable reference loop); identical results.
    Returns:
        :class:`GPTQResult`.
    """
    W = _as_float32_tensor(W, "W")
    H = _as_float32_tensor(H, "H")
    _validate_settings(W, bits, group_size)
    bits, group_size = int(bits), int(group_size)
    out, cols = W.shape
    if H.dim() != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"H must be square (in_features, in_features), got shape {tuple(H.shape)}")
    if H.shape[0] != cols:
        raise ValueError(f"H must be ({cols}, {cols}) to match W's in_features={cols}, "
                         f"got {tuple(H.shape)} (was H computed from this layer's inputs?)")
    _check_finite(H, "H")
    if not torch.any(torch.diag(H) != 0):
        raise ValueError("H is all zero on the diagonal: empty calibration (no inputs reached this "
                         "layer); pass calibration tokens to hessian()")
    blocksize = validate.integer(blocksize, "blocksize", lo=1)
    percdamp = validate.number(percdamp, "percdamp", lo=0.0)
    sym = validate.flag(sym, "sym")
    act_order = validate.flag(act_order, "act_order")
    static_groups = validate.flag(static_groups, "static_groups")
    if backend not in ("numba", "torch"):
        raise ValueError(f"backend must be 'numba' or 'torch', got {backend!r}")
    maxq = 2 ** bits - 1
    W, H = W.clone(), H.clone()

    # Per-row params of the whole matrix (what per-channel quantization uses), before dead columns.
    scale_all, zero_all = find_params(W, bits, sym)

    # Inputs that never fire: make H invertible there and drop the weight (it never contributes).
    dead = torch.diag(H) == 0
    if dead.any():
        H[dead, dead] = 1
        W[:, dead] = 0

    grouped = group_size != -1
    static = grouped and static_groups
    if static:  # one quantizer per natural group, from the weights before any update
        static_params = [find_params(W[:, c:c + group_size], bits, sym) for c in range(0, cols, group_size)]

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]

    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(cols)
    H[diag, diag] += damp
    Hinv = _inverse_hessian_cholesky(H)

    codes = torch.empty(out, cols, dtype=torch.uint8)
    loss = 0.0
    scales, zeros = [], []                       # group params in the order they are created
    current = (scale_all, zero_all)              # params in force (carried across blocks)
    sweep = _sweep_block_numba if backend == "numba" else _sweep_block_torch
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Hinv1 = Hinv[i1:i2, i1:i2]
        # The quantizer of each column of this block, as a small table + an index per column.
        if static:
            groups = (perm[i1:i2] if act_order else torch.arange(i1, i2)) // group_size
            table = static_params
            col_group = groups.tolist()
        elif grouped:
            # Quirk Q2: groups starting in this block read the outer W, which does not hold the
            # in-block updates yet (they are applied after the block).
            table, col_group = [current], []
            for c in range(i1, i2):
                if c % group_size == 0:
                    table.append(find_params(W[:, c:c + group_size], bits, sym))
                    scales.append(table[-1][0])
                    zeros.append(table[-1][1])
                col_group.append(len(table) - 1)
            current = table[-1]
        else:
            table, col_group = [current], [0] * count
        scale_tab = torch.stack([t[0] for t in table])           # (n_table, out)
        zero_tab = torch.stack([t[1] for t in table])
        codes1 = torch.empty(out, count, dtype=torch.uint8)
        Err1 = torch.empty(out, count, dtype=torch.float32)
        losses1 = torch.empty(out, count, dtype=torch.float32)
        _run_sweep(sweep, W1, Hinv1, scale_tab, zero_tab, col_group, maxq, codes1, Err1, losses1)
        codes[:, i1:i2] = codes1
        loss += float(losses1.sum(dtype=torch.float64)) / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])      # lazy update of all later columns

    # AutoGPTQ's bookkeeping: scales in creation order, g_idx per original column.
    if static:
        scales = [p[0] for p in static_params]
        zeros = [p[1] for p in static_params]
        g_idx = torch.arange(cols) // group_size
    else:
        if not grouped:
            scales, zeros = [scale_all], [zero_all]
        gs = group_size if grouped else cols
        g_idx = torch.arange(cols) // gs
        if act_order:
            g_idx = g_idx[torch.argsort(perm)]
    if act_order:
        codes = codes[:, torch.argsort(perm)]
    scales, zeros = torch.stack(scales, 1), torch.stack(zeros, 1)
    g_idx = g_idx.to(torch.int32)
    Q = dequantize(codes, scales, zeros, g_idx)
    return GPTQResult(codes, scales, zeros, g_idx, perm, Q, loss,
                      bits, group_size, bool(sym))


def _run_sweep(sweep, W1, Hinv1, scale_tab, zero_tab, col_group, maxq, codes1, Err1, losses1):
    if sweep is _sweep_block_torch:
        sweep(W1, Hinv1, scale_tab, zero_tab, col_group, maxq, codes1, Err1, losses1)
    else:
        sweep(W1.numpy(), np.ascontiguousarray(Hinv1.numpy()), scale_tab.numpy(), zero_tab.numpy(),
              np.asarray(col_group, dtype=np.int64), np.float32(maxq), codes1.numpy(),
              Err1.numpy(), losses1.numpy())


def synthetic_layer(seed: int = 1, out_features: int = 512, in_features: int = 1024,
                    n_tokens: int = 2048, n_outliers: int = 10, outlier_factor: float = 10.0):
    """The oracle's seeded test layer: Gaussian W and X with a few loud input channels.

    Recipe (``numpy.random.default_rng(seed)``): ``W = standard_normal((out, in)) float32 / sqrt(in)``,
    then ``X = standard_normal((n_tokens, in)) float32``, then ``outliers = sorted(choice(in,
    n_outliers, replace=False))`` and ``X[:, outliers] *= outlier_factor``. The defaults give the
    "medium" oracle layer; ``seed=0, out=64, in=128, n_tokens=512, n_outliers=0`` gives "small".
    Returns ``W (out, in) float32, X (n_tokens, in) float32, outliers (n_outliers,) int64``.
    """
    for name, v in (("out_features", out_features), ("in_features", in_features),
                    ("n_tokens", n_tokens)):
        validate.integer(v, name, lo=1)
    validate.integer(n_outliers, "n_outliers", lo=0, hi=in_features)
    outlier_factor = validate.number(outlier_factor, "outlier_factor", lo=0.0, lo_open=True)
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((out_features, in_features)).astype(np.float32) / np.float32(np.sqrt(in_features))
    X = rng.standard_normal((n_tokens, in_features)).astype(np.float32)
    outliers = np.sort(rng.choice(in_features, n_outliers, replace=False)) if n_outliers else np.zeros(0, np.int64)
    X[:, outliers] *= np.float32(outlier_factor)
    return W, X, outliers


# --------------------------------------------------------------------------------------------
# 4. The AutoGPTQ / transformers checkpoint layout
# --------------------------------------------------------------------------------------------
# qweight (in*bits/32, out) int32: codes packed along the INPUT dimension.
# qzeros  (n_groups, out*bits/32) int32: zero points packed along the OUTPUT dimension; the
#         original "gptq" format stores zero - 1 (kernels add the 1 back), "gptq_v2" stores zero.
# scales  (n_groups, out) float16.   g_idx (in,) int32.
# Every run of 32 codes is a little-endian bit stream of 32*bits bits cut into `bits` words:
# code k occupies bits [bits*k, bits*k + bits) of the stream (for 3 bits, codes 10 and 21 straddle
# two words).

PACK_FORMATS = ("gptq", "gptq_v2")
SCALES_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
PACKED_KEYS = ("qweight", "qzeros", "scales", "g_idx")


def _check_packed(packed, where: str = "packed") -> int:
    """Check a packed AutoGPTQ layer's tensors against each other; return its bit width."""
    if not isinstance(packed, dict):
        raise validate.ArgumentTypeError(f"{where} must be a dict of tensors from pack_autogptq, "
                                         f"got {type(packed).__name__}")
    missing = set(PACKED_KEYS) - set(packed)
    if missing:
        raise ValueError(f"{where} must have qweight, qzeros, scales and g_idx, got keys "
                         f"{sorted(packed)} (missing {sorted(missing)})")
    for k in PACKED_KEYS:
        if not isinstance(packed[k], torch.Tensor):
            raise validate.ArgumentTypeError(f"{where}[{k!r}] must be a torch tensor, got "
                                             f"{type(packed[k]).__name__}")
    qweight, qzeros, scales, g_idx = (packed[k] for k in PACKED_KEYS)
    for k, t, nd in (("qweight", qweight, 2), ("qzeros", qzeros, 2), ("g_idx", g_idx, 1)):
        if t.dtype != torch.int32 or t.dim() != nd or t.numel() == 0:
            raise ValueError(f"{where}[{k!r}] must be a non-empty {nd}-D int32 tensor, got "
                             f"{t.dtype} of shape {tuple(t.shape)}")
    if scales.dtype not in SCALES_DTYPES or scales.dim() != 2:
        raise ValueError(f"{where}['scales'] must be 2-D float16/bfloat16/float32, got "
                         f"{scales.dtype} of shape {tuple(scales.shape)}")
    cols, out = g_idx.shape[0], qweight.shape[1]
    bits = qweight.shape[0] * PACK_CHUNK // cols
    if not MIN_BITS <= bits <= MAX_BITS or qweight.shape[0] * PACK_CHUNK != bits * cols:
        raise ValueError(f"{where}: qweight shape {tuple(qweight.shape)} does not fit g_idx of "
                         f"length {cols} at any bit width {MIN_BITS}..{MAX_BITS}")
    n_groups = scales.shape[0]
    if scales.shape != (n_groups, out) or qzeros.shape != (n_groups, out * bits // PACK_WORD_BITS):
        raise ValueError(f"{where}: scales and qzeros must be ({n_groups}, {out}) and "
                         f"({n_groups}, {out * bits // PACK_WORD_BITS}) for {bits}-bit qweight "
                         f"{tuple(qweight.shape)}, got {tuple(scales.shape)} and "
                         f"{tuple(qzeros.shape)}")
    if int(g_idx.min()) < 0 or int(g_idx.max()) >= n_groups:
        raise ValueError(f"{where}: g_idx must index the {n_groups} groups, got values "
                         f"{int(g_idx.min())}..{int(g_idx.max())}")
    if not bool(torch.isfinite(scales).all()):
        raise ValueError(f"{where}: scales must be finite, got "
                         f"{int((~torch.isfinite(scales)).sum())} NaN/Inf")
    return bits


def _pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack ``values: (n, m)`` (each < 2^bits) along axis 0 into ``(n*bits/32, m)`` uint32."""
    n, m = values.shape
    v = values.astype(np.uint64).reshape(n // PACK_CHUNK, PACK_CHUNK, m)
    words = np.zeros((n // PACK_CHUNK, bits, m), dtype=np.uint64)
    for k in range(PACK_CHUNK):
        word, shift = divmod(bits * k, PACK_WORD_BITS)
        words[:, word] |= (v[:, k] << np.uint64(shift)) & np.uint64(0xFFFFFFFF)
        if shift + bits > PACK_WORD_BITS:  # the code spills into the next word
            words[:, word + 1] |= v[:, k] >> np.uint64(PACK_WORD_BITS - shift)
    return words.reshape(n // PACK_CHUNK * bits, m).astype(np.uint32)


def _unpack_rows(words: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`_pack_rows`: ``(n*bits/32, m)`` uint32 -> ``(n, m)`` uint32."""
    w = words.astype(np.uint64).reshape(-1, bits, words.shape[1])
    mask = np.uint64(2 ** bits - 1)
    out = np.zeros((w.shape[0], PACK_CHUNK, w.shape[2]), dtype=np.uint64)
    for k in range(PACK_CHUNK):
        word, shift = divmod(bits * k, PACK_WORD_BITS)
        v = w[:, word] >> np.uint64(shift)
        if shift + bits > PACK_WORD_BITS:
            v |= w[:, word + 1] << np.uint64(PACK_WORD_BITS - shift)
        out[:, k] = v & mask
    return out.reshape(-1, w.shape[2]).astype(np.uint32)


def pack_autogptq(result: GPTQResult, format: str = "gptq",
                  scales_dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Pack a :class:`GPTQResult` into the AutoGPTQ checkpoint tensors.

    Returns ``{"qweight": (in*bits/32, out) int32, "qzeros": (n_groups, out*bits/32) int32,
    "scales": (n_groups, out) float16, "g_idx": (in,) int32}``. ``format="gptq"`` (AutoGPTQ's
    default, what transformers loads) stores ``zero - 1``; ``"gptq_v2"`` stores the zero itself.
    in_features and out_features must be multiples of 32.
    """
    if format not in PACK_FORMATS:
        raise ValueError(f"format must be one of {PACK_FORMATS}, got {format!r}")
    if not isinstance(result, GPTQResult):
        raise validate.ArgumentTypeError(f"result must be a GPTQResult (from gptq_quantize or "
                                         f"rtn_quantize), got {type(result).__name__}")
    if scales_dtype not in SCALES_DTYPES:
        raise ValueError(f"scales_dtype must be one of {SCALES_DTYPES} (scales are real "
                         f"numbers; an integer type would zero them), got {scales_dtype!r}")
    out, cols = result.codes.shape
    bits = validate.bits(result.bits, "result.bits", MIN_BITS, MAX_BITS)
    if result.codes.dtype != torch.uint8 or int(result.codes.max()) >= 2 ** bits:
        raise ValueError(f"result.codes must be uint8 codes below 2^{bits}, got "
                         f"{result.codes.dtype} up to {int(result.codes.max())}")
    if not bool(torch.isfinite(result.scales.to(scales_dtype)).all()):
        raise ValueError(f"result.scales overflow {scales_dtype} (largest "
                         f"{float(result.scales.abs().max()):g}); pass scales_dtype=torch.float32")
    if cols % PACK_CHUNK or out % PACK_CHUNK:
        raise ValueError(f"AutoGPTQ packs 32 codes at a time: in_features and out_features must be "
                         f"multiples of {PACK_CHUNK}, got ({out}, {cols}) (pad the layer)")
    zeros = result.zeros.detach().numpy().astype(np.int64)
    if format == "gptq":
        if (zeros == 0).any():
            raise ValueError("a zero point of 0 cannot be stored in the 'gptq' (v1) format, which "
                             "stores zero - 1; use format='gptq_v2' (or sym=True)")
        zeros = zeros - 1
    qweight = _pack_rows(result.codes.numpy().T.astype(np.uint32), bits)          # along in
    qzeros = _pack_rows(zeros.astype(np.uint32), bits).T                           # along out
    return {
        "qweight": torch.from_numpy(qweight.view(np.int32).copy()),
        "qzeros": torch.from_numpy(np.ascontiguousarray(qzeros).view(np.int32).copy()),
        "scales": result.scales.T.contiguous().to(scales_dtype),
        "g_idx": result.g_idx.to(torch.int32).clone(),
    }


def unpack_autogptq(packed: dict[str, torch.Tensor], format: str = "gptq") -> GPTQResult:
    """Inverse of :func:`pack_autogptq` (bits inferred from the shapes); scales come back as float32."""
    if format not in PACK_FORMATS:
        raise ValueError(f"format must be one of {PACK_FORMATS}, got {format!r}")
    bits = _check_packed(packed)
    qweight, qzeros = packed["qweight"].numpy(), packed["qzeros"].numpy()
    g_idx = packed["g_idx"].to(torch.int32)
    cols = g_idx.shape[0]
    codes = _unpack_rows(qweight.view(np.uint32), bits).T
    zeros = _unpack_rows(np.ascontiguousarray(qzeros.view(np.uint32).T), bits).astype(np.int64)
    if format == "gptq":
        zeros = zeros + 1
    if zeros.max() > 2 ** bits - 1:
        raise ValueError(f"packed qzeros hold a zero point of {int(zeros.max())}, above the "
                         f"{bits}-bit codes (was it written as format='gptq_v2'?)")
    scales = packed["scales"].to(torch.float32).T.contiguous()
    zeros = torch.from_numpy(zeros.astype(np.float32))
    codes = torch.from_numpy(np.ascontiguousarray(codes).astype(np.uint8))
    n_groups = scales.shape[1]
    group_size = -1 if n_groups == 1 else cols // n_groups
    return GPTQResult(codes, scales, zeros, g_idx, None, dequantize(codes, scales, zeros, g_idx),
                      None, bits, group_size, False)


def save_autogptq(path, tensors: dict[str, dict[str, torch.Tensor]], bits: int, group_size: int,
                  sym: bool, desc_act: bool) -> None:
    """Save packed layers ``{"layers.0.mlp.up_proj": pack_autogptq(...)}`` as one safetensors file.

    Tensor names follow transformers: ``<layer>.qweight`` etc.; the quantize config goes into
    the file's metadata.
    """
    from safetensors.torch import save_file

    path = validate.path(path)
    bits = validate.bits(bits, "bits", MIN_BITS, MAX_BITS)
    group_size = validate.integer(group_size, "group_size", lo=-1)
    if group_size == 0:
        raise ValueError("group_size must be -1 (one group per row) or positive, got 0")
    sym, desc_act = validate.flag(sym, "sym"), validate.flag(desc_act, "desc_act")
    if not isinstance(tensors, dict) or not tensors:
        raise ValueError(f"tensors must be a non-empty dict {{layer name: pack_autogptq(...)}}, "
                         f"got {type(tensors).__name__}")
    for name, packed in tensors.items():
        got = _check_packed(packed, f"tensors[{name!r}]")
        if got != bits:
            raise ValueError(f"layer {name!r} holds {got}-bit codes but bits={bits}: the "
                             f"config would describe the tensors wrongly")
        cols, n_groups = packed["g_idx"].shape[0], packed["scales"].shape[0]
        want = 1 if group_size == -1 else cols // group_size
        if n_groups != want:
            raise ValueError(f"group_size={group_size} means {want} groups for {cols} inputs, "
                             f"got {n_groups} groups in layer {name!r}")
    flat = {f"{name}.{k}": v.contiguous() for name, packed in tensors.items() for k, v in packed.items()}
    meta = {"quant_method": "gptq", "bits": str(bits), "group_size": str(group_size),
            "sym": str(bool(sym)).lower(), "desc_act": str(bool(desc_act)).lower()}
    save_file(flat, str(path), metadata=meta)


def load_autogptq(path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """Read a file written by :func:`save_autogptq`: ``({layer: packed dict}, metadata)``."""
    from qlearn import checkpoint

    layers: dict[str, dict[str, torch.Tensor]] = {}
    flat, meta = checkpoint.load_safetensors(path)
    for key, t in flat.items():
        name, _, part = key.rpartition(".")
        layers.setdefault(name, {})[part] = t
    for key in ("quant_method", "bits", "group_size", "sym", "desc_act"):
        if key not in meta:
            raise ValueError(f"corrupt GPTQ checkpoint: metadata lacks {key!r} (got "
                             f"{sorted(meta)})")
    for name, packed in layers.items():
        got = _check_packed(packed, f"layer {name!r}")
        if str(got) != meta["bits"]:
            raise ValueError(f"corrupt GPTQ checkpoint: layer {name!r} holds {got}-bit codes "
                             f"but the config says bits={meta['bits']}")
    return layers, meta


# --------------------------------------------------------------------------------------------
# 5. A whole model, layer by layer
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def gptq_model(model, calib_tokens, bits: int = 4, group_size: int = 128, sym: bool = True,
               act_order: bool = False, static_groups: bool = False,
               blocksize: int = DEFAULT_BLOCKSIZE, percdamp: float = DEFAULT_PERCDAMP,
               progress: bool = True):
    """Quantize every linear of every decoder layer with GPTQ, sequentially (the paper's scheme).

    Layer ``i``'s linears are calibrated on the inputs they receive when the calibration tokens
    run through layers ``0..i-1`` *already quantized*, so each layer corrects for the errors of the
    layers before it. Inside a layer all linears see the layer's original weights (the reference's
    default). Model structure comes only from :mod:`qlearn.adapters`.

    Args:
        model: a decoder with Llama naming (``qlearn.models.load("tiny")[0]``); not modified.
        calib_tokens: (batch, seq) int64 calibration tokens.
        bits, group_size, sym, act_order, static_groups, blocksize, percdamp: as :func:`gptq_quantize`.
        progress: show a tqdm bar over layers.
    Returns:
        ``(quantized_model, results)``: a deep copy whose linear weights are the dequantized ``Q``,
        and ``{linear name: GPTQResult}``.
    """
    import copy

    from tqdm.auto import tqdm

    from qlearn import adapters

    tokens = validate.model_tokens(model, calib_tokens, "calib_tokens")
    if tokens.dim() == 1:
        tokens = tokens[None]
    validate.bits(bits, "bits", MIN_BITS, MAX_BITS)
    validate.flag(progress, "progress")
    for name in ("sym", "act_order", "static_groups"):
        validate.flag(locals()[name], name)
    qmodel = copy.deepcopy(model).eval()
    linears = adapters.find_linears(qmodel)
    by_layer: dict[int, list[str]] = {}
    for name in linears:
        by_layer.setdefault(int(name.split(".")[1]), []).append(name)
    results: dict[str, GPTQResult] = {}
    n_layers = len(adapters.decoder_layers(qmodel))
    for i in tqdm(range(n_layers), desc="GPTQ layers", disable=not progress):
        names = by_layer.get(i, [])
        inputs = adapters.capture_inputs(qmodel, tokens, names)   # through quantized layers < i
        for name in names:
            lin = linears[name]
            X = inputs[name].reshape(tokens.shape[0], tokens.shape[1], -1)   # nsamples = sequences
            r = gptq_quantize(lin.weight.float(), hessian(X), bits, group_size, sym, act_order,
                              static_groups, blocksize, percdamp)
            results[name] = r
        for name in names:                                           # swap weights after capture
            linears[name].weight.copy_(results[name].Q.to(linears[name].weight.dtype))
    return qmodel, results
