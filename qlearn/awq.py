"""AWQ: activation-aware weight quantization (Lin et al., 2023), matching llm-awq and AutoAWQ.

The idea in one line: a few input channels carry large activations, so errors on the weights that
multiply them cost the most. AWQ does *not* keep those weights in higher precision; it multiplies
weight column ``j`` by a factor ``s_j > 1`` before rounding (and divides the input by ``s_j``, which
is folded into the previous layer for free), so the salient columns use more of the 4-bit grid.

Pipeline for one linear layer ``y = x W^T`` with calibration inputs ``X``:

1. ``x_mean_abs[j] = mean_t |X[t, j]|`` (llm-awq calls it ``x_max``; it is a mean).
2. For ratios ``r = k/20, k = 0..19``: ``s = clamp(x_mean_abs^r, 1e-4)``, ``s /= sqrt(max s * min s)``;
   loss = mean squared difference of the layer output with the weight ``Q(W * s) / s``.
   The first strict minimum wins (:func:`search_scale`).
3. Apply: ``W *= s`` (columns), ``X /= s``.
4. Clip search per (row, group) on the scaled weight and scaled inputs (:func:`search_clip`).
5. Final grouped asymmetric quantization of the clipped, scaled weight (:func:`pseudo_quantize`).

Everything is torch float32 on CPU, with the same operation order as upstream, so scales and
losses agree with the reference to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from qlearn import uniform, validate
from qlearn._checks import check_bits, check_group_size, check_matrix, check_pair  # noqa: F401 (re-exported)

__all__ = ["outlier_layer", "pseudo_quantize", "search_scale", "search_clip", "awq_quantize", "apply_clip",
           "output_error", "AWQScale", "AWQResult", "N_GRID", "N_SAMPLE_TOKEN",
           "CLIP_SHRINKS", "awq_model", "rtn_model"]

N_GRID = 20              # ratios k/N_GRID, k = 0..19: a 20-point grid on [0, 1), 1.0 excluded (upstream)
SCALE_FLOOR = 1e-4       # s is clamped at 1e-4 so no channel's weights are divided by ~0
DUO_EPS = 1e-4           # AutoAWQ duo scaling: added to w_mean^(1-r) to avoid dividing by 0
W_MEAN_EPS = 1e-6        # AutoAWQ duo scaling: added to each group's absmax when normalising |W|
QSCALE_FLOOR = uniform.AWQ_SCALE_FLOOR  # step floor: a constant group gets 1e-5/(2^b - 1), not 0
MAPPING = "asymmetric_minmax"  # AWQ's grid in qlearn.uniform.MAPPINGS
CLIP_N_GRID = 20         # clip candidates m = absmax * (1 - i/20) ...
CLIP_MAX_SHRINK = 0.5    # ... for i < 0.5 * 20: shrink factors 1.0, 0.95, ..., 0.55
CLIP_SHRINKS = tuple(1 - i / CLIP_N_GRID for i in range(int(CLIP_MAX_SHRINK * CLIP_N_GRID)))
N_SAMPLE_TOKEN = 512     # the clip search subsamples tokens with step n_tokens // 512 (needs >= 512)


# --- the test layer ---------------------------------------------------------------------------

def outlier_layer(out_features: int = 512, in_features: int = 1024, n_tokens: int = 2048,
                  n_outliers: int = 10, outlier_gain: float = 10.0, seed: int = 1):
    """The "medium" layer of the book and of the oracle data: Gaussian W, X with a few loud channels.

    ``W = N(0, 1) / sqrt(in)``, ``X = N(0, 1)`` and ``n_outliers`` input channels of X multiplied by
    ``outlier_gain`` (1 % x10 by default), all from ``numpy.random.default_rng(seed)``. With the
    defaults this reproduces the oracle's W and X bit for bit (a test checks it).

    Returns:
        ``(W (out, in) float32, X (tokens, in) float32, outlier_channels (n_outliers,) int64)``
        as torch tensors.
    """
    from qlearn.gptq import synthetic_layer   # one generator for the book's layer

    W, X, channels = synthetic_layer(seed, out_features, in_features, n_tokens, n_outliers, outlier_gain)
    return torch.from_numpy(W), torch.from_numpy(X), torch.from_numpy(channels.astype(np.int64))


# --- the quantizer ----------------------------------------------------------------------------

def _quantize_rows(w: torch.Tensor, bits: int):
    """Asymmetric min/max quantization of each row of ``w: (rows, g)`` (AWQ's grid).

    A short wrapper of :mod:`qlearn.uniform` with the mapping ``"asymmetric_minmax"``: the
    range is ``[min, max]`` of the row itself, NOT widened to contain 0 (GPTQ's quantizer
    widens it), ``scale = clamp(max - min, 1e-5) / (2^b - 1)``.
    Upstream quirk kept: the zero point is clamped to ``[0, 2^b - 1]``, so a row entirely above 0
    gets zero 0 and the grid ``[0, max - min]`` (a constant row collapses to ``1e-5``). Rows of
    real weight groups straddle 0, where this never triggers.

    Returns ``(deq, codes, scales, zeros)``: ``deq (rows, g)`` float32, ``codes (rows, g)``
    float32 integers, ``scales, zeros: (rows, 1)`` float32.
    """
    x = w.detach().numpy()
    bs = (1, x.shape[1])
    scale, zero = uniform.choose_qparams(x, bits, bs, MAPPING, range_floor=QSCALE_FLOOR)
    q = uniform.quantize_affine(x, scale, zero, bits, block_size=bs, mapping=MAPPING)
    deq = uniform.dequantize(q)
    return (torch.from_numpy(deq), torch.from_numpy(q.codes.astype(np.float32)),
            torch.from_numpy(scale), torch.from_numpy(zero.astype(np.float32)))


@validate.renamed(w_bit="bits")
def pseudo_quantize(W, bits: int = 4, group_size: int = 128):
    """AWQ's grouped asymmetric quantizer (llm-awq ``pseudo_quantize_tensor``, zero_point=True).

    Args:
        W: (out_features, in_features) float32.
        bits: bits per weight (2..8); ``w_bit=`` is a deprecated alias.
        group_size: consecutive input columns sharing one scale/zero; must divide in_features
            (-1: one group per row).

    Returns:
        ``(Q, codes, scales, zeros)``: ``Q (out, in) float32`` dequantized weight,
        ``codes (out, in) uint8``, ``scales, zeros (out, n_groups) float32`` with
        ``Q = (codes - zeros) * scales`` per group. Rounding is half-to-even (torch.round).
    """
    W = check_matrix(W, "W", "(out_features, in_features)")
    bits = check_bits(bits, "bits (formerly w_bit)")
    gs = check_group_size(W.shape[1], group_size)
    return _pseudo_quantize(W, bits, gs)


def _pseudo_quantize(W: torch.Tensor, bits: int, gs: int):
    out, n_in = W.shape
    deq, codes, scales, zeros = _quantize_rows(W.reshape(-1, gs), bits)
    return (deq.reshape(out, n_in), codes.to(torch.uint8).reshape(out, n_in),
            scales.reshape(out, -1), zeros.reshape(out, -1))


def output_error(X, W, W_hat, X_hat=None) -> float:
    """Relative output error ``||X W^T - X_hat W_hat^T||_F^2 / ||X W^T||_F^2`` in float64.

    ``X: (tokens, in)``, ``W, W_hat: (out, in)``; ``X_hat`` defaults to ``X`` (pass ``X / s`` with
    a scaled ``W_hat`` to measure AWQ in its scaled space).
    """
    W, X = check_pair(W, X)
    W_hat = check_matrix(W_hat, "W_hat", "(out_features, in_features)")
    X_hat = X if X_hat is None else check_matrix(X_hat, "X_hat", "(tokens, in_features)")
    if W_hat.shape != W.shape or X_hat.shape != X.shape:
        raise ValueError(f"W_hat and X_hat must have the shapes of W {tuple(W.shape)} and X "
                         f"{tuple(X.shape)}, got {tuple(W_hat.shape)} and {tuple(X_hat.shape)}")
    X64, W64 = X.double(), W.double()
    ref = X64 @ W64.T
    approx = X_hat.double() @ W_hat.double().T
    return float(((ref - approx) ** 2).sum() / (ref ** 2).sum())


# --- scale search -----------------------------------------------------------------------------

@dataclass
class AWQScale:
    """Result of :func:`search_scale`.

    Attributes:
        scales: (in_features,) float32, the chosen per-input-channel factors s.
        best_ratio: the exponent r of the winning grid point.
        loss_history: (20,) float64, the loss at each ratio of ``ratio_grid``.
        x_mean_abs: (in_features,) float32, mean |x| per input channel.
        ratio_grid: (20,) float64, k/20 for k = 0..19.
    """
    scales: torch.Tensor
    best_ratio: float
    loss_history: torch.Tensor
    x_mean_abs: torch.Tensor
    ratio_grid: torch.Tensor = field(default_factory=lambda: torch.arange(N_GRID, dtype=torch.float64) / N_GRID)


def _as_weight_list(W) -> list[torch.Tensor]:
    if isinstance(W, (list, tuple)):
        if not W:
            raise ValueError("W must be a weight or a non-empty list of weights, got an empty list")
        return list(W)
    return [W]


def _w_mean(Ws: list[torch.Tensor], gs: int) -> torch.Tensor:
    """AutoAWQ's weight statistic: mean over rows of |W| / (its group's absmax + 1e-6)."""
    weight = torch.cat(Ws, dim=0)
    g = weight.view(-1, gs)
    w_scale = g.abs() / (g.abs().amax(dim=1, keepdim=True) + W_MEAN_EPS)
    return w_scale.view(weight.shape).mean(0)


def candidate_scales(x_mean_abs: torch.Tensor, ratio: float, w_mean: torch.Tensor | None = None):
    """The per-channel factors s for one grid ratio (duo scaling when ``w_mean`` is given).

    ``s = clamp(x^r, 1e-4)`` (llm-awq) or ``clamp(x^r / (w^(1-r) + 1e-4), 1e-4)`` (AutoAWQ
    duo_scaling), then normalised so that ``max s * min s = 1``.
    """
    x_mean_abs = validate.float_tensor(x_mean_abs, "x_mean_abs", ndim=1)
    ratio = validate.number(ratio, "ratio", lo=0.0, hi=1.0)
    if w_mean is not None:
        w_mean = validate.float_tensor(w_mean, "w_mean", ndim=1)
    if w_mean is None:
        s = x_mean_abs.pow(ratio).clamp(min=SCALE_FLOOR).view(-1)
    else:
        s = (x_mean_abs.pow(ratio) / (w_mean.pow(1 - ratio) + DUO_EPS)).clamp(min=SCALE_FLOOR)
    return s / (s.max() * s.min()).sqrt()


@validate.renamed(w_bit="bits")
def search_scale(W, X, bits: int = 4, group_size: int = 128, duo_scaling: bool = False, *,
                 forward: Callable[[list[torch.Tensor]], torch.Tensor] | None = None,
                 progress: bool = False) -> AWQScale:
    """Grid-search AWQ's per-input-channel scales s for one linear (or several sharing X).

    Args:
        W: (out_features, in_features) float32, or a list of such weights that all read ``X``
            (q/k/v, gate/up); their statistics are pooled as upstream does.
        X: (tokens, in_features) float32 calibration inputs.
        bits, group_size: the quantizer of :func:`pseudo_quantize`.
        duo_scaling: False = llm-awq (s from activations only); True = AutoAWQ's default
            (s = x_mean^r / w_mean^(1-r)).
        forward: optional ``forward(weights) -> output`` of the module AWQ inspects (a whole
            attention or MLP block for a model); default: ``X @ concat(W)^T``.
        progress: show a tqdm bar over the 20 ratios.

    Returns:
        :class:`AWQScale` (scales, best_ratio, loss_history (20,), x_mean_abs).
    """
    Ws = [check_pair(w, X)[0] for w in _as_weight_list(W)]
    X = check_matrix(X, "X", "(tokens, in_features)")
    bits = check_bits(bits, "bits (formerly w_bit)")
    gs = check_group_size(X.shape[1], group_size)
    duo_scaling = validate.flag(duo_scaling, "duo_scaling")
    if forward is None:
        def forward(weights):  # the inspected module is the linear itself
            return torch.nn.functional.linear(X, torch.cat(weights, dim=0))
    with torch.no_grad():
        org_out = forward(Ws)
        if duo_scaling:  # AutoAWQ: sum in float32, then divide
            x_mean = X.abs().view(-1, X.shape[-1]).to(torch.float32).sum(dim=0) / X.shape[0]
            w_mean = _w_mean(Ws, gs)
        else:            # llm-awq: mean over tokens
            x_mean = X.abs().view(-1, X.shape[-1]).mean(0)
            w_mean = None
        history, best, best_ratio, best_s = [], float("inf"), -1.0, None
        for k in tqdm(range(N_GRID), desc="AWQ scale search", disable=not progress, leave=False):
            ratio = k / N_GRID
            s = candidate_scales(x_mean, ratio, w_mean)
            s_row = s.view(1, -1)
            cand = [_pseudo_quantize(w * s_row, bits, gs)[0] / s_row for w in Ws]
            loss = (org_out - forward(cand)).float().pow(2).mean().item()
            history.append(loss)
            if loss < best:  # strict: the first minimum wins
                best, best_ratio, best_s = loss, ratio, s
    return AWQScale(best_s, best_ratio, torch.tensor(history, dtype=torch.float64), x_mean)


# --- clip search ------------------------------------------------------------------------------

@validate.renamed(w_bit="bits")
def search_clip(W, X, bits: int = 4, group_size: int = 128, *,
                n_sample_token: int = N_SAMPLE_TOKEN, progress: bool = False) -> torch.Tensor:
    """Per (row, group) clipping threshold minimising the group's partial-output error.

    For every row r and group g, candidates ``m = absmax|W[r, g]| * f`` with
    ``f in CLIP_SHRINKS = (1.0, 0.95, ..., 0.55)``; the weight is clamped to ``[-m, m]``,
    quantized, and the error is ``mean_t (x_t,g . Q(w_c) - x_t,g . w)^2`` over tokens subsampled
    with step ``n_tokens // n_sample_token``. Strict ``<``: the smallest error, first f on ties.

    Args:
        W: (out_features, in_features) float32 (already scaled by s when used inside AWQ).
        X: (tokens, in_features) float32 (already divided by s), at least ``n_sample_token`` rows.

    Returns:
        max_val: (out_features, n_groups) float32, the chosen m per (row, group).
    """
    W, X = check_pair(W, X)
    bits = check_bits(bits, "bits (formerly w_bit)")
    gs = check_group_size(W.shape[1], group_size)
    if X.shape[0] < n_sample_token:
        raise ValueError(f"the clip search needs at least n_sample_token = {n_sample_token} "
                         f"calibration tokens, got X with {X.shape[0]} rows (collect more "
                         f"calibration text or pass a smaller n_sample_token)")
    out, n_in = W.shape
    n_groups = n_in // gs
    with torch.no_grad():
        x = X[:: X.shape[0] // n_sample_token].reshape(-1, n_groups, gs)   # (t, G, gs)
        w = W.reshape(out, n_groups, gs)                                   # (out, G, gs)
        xg = x.permute(1, 0, 2)                                            # (G, t, gs)
        org_out = torch.bmm(xg, w.permute(1, 2, 0))                        # (G, t, out)
        org_max = w.abs().amax(dim=-1, keepdim=True)                       # (out, G, 1)
        best = org_max.clone()
        min_err = torch.full_like(org_max, 1e9)
        for i_s in tqdm(range(len(CLIP_SHRINKS)), desc="AWQ clip search", disable=not progress,
                        leave=False):
            max_val = org_max * (1 - i_s / CLIP_N_GRID)
            cur = torch.clamp(w, -max_val, max_val)
            q = _quantize_rows(cur.reshape(-1, gs), bits)[0].reshape(out, n_groups, gs)
            cur_out = torch.bmm(xg, q.permute(1, 2, 0))                    # (G, t, out)
            err = (cur_out - org_out).pow(2).mean(dim=1).T.unsqueeze(-1)   # (out, G, 1)
            better = err < min_err
            min_err[better] = err[better]
            best[better] = max_val[better]
    return best.squeeze(-1)


def apply_clip(W: torch.Tensor, max_val: torch.Tensor) -> torch.Tensor:
    """Clamp each (row, group) of ``W (out, in)`` to ``[-max_val, max_val]``; returns a new tensor."""
    W = check_matrix(W, "W", "(out_features, in_features)")
    max_val = check_matrix(max_val, "max_val", "(out_features, n_groups)")
    out, n_in = W.shape
    if max_val.shape[0] != out or n_in % max_val.shape[1] or (max_val < 0).any():
        raise ValueError(f"max_val must be (out_features, n_groups) = ({out}, a divisor of "
                         f"{n_in}) and >= 0, got {tuple(max_val.shape)}")
    mv = max_val.reshape(out, -1, 1)
    return torch.clamp(W.reshape(out, mv.shape[1], -1), -mv, mv).reshape(out, n_in)


# --- the whole layer --------------------------------------------------------------------------

@dataclass
class AWQResult:
    """Result of :func:`awq_quantize` for one linear layer.

    Attributes:
        codes: (out, in) uint8, final codes of the scaled and clipped weight.
        qscales, qzeros: (out, n_groups) float32, quantizer step and zero point per group.
        Q: (out, in) float32, dequantized weight in the scaled space (pairs with ``X / scales``).
        W_hat: (out, in) float32, ``Q / scales``: the effective weight in the original x-space.
        scales: (in,) float32, AWQ's s; best_ratio, loss_history (20,), x_mean_abs (in,).
        clip_max_val: (out, n_groups) float32, clip thresholds chosen on the scaled weight.
        clip_only_max_val: (out, n_groups) float32, clip thresholds without scaling.
        errors: relative output errors ``{"rtn", "scale_only", "clip_only", "full"}``.
        bits, group_size: the settings used.

    The project's result convention: :attr:`qtensor` is the scaled weight's grid as a
    :class:`qlearn.uniform.QTensor` (mapping ``"asymmetric_minmax"``), and :meth:`dequantize`
    takes no argument and returns ``Q`` bit for bit.
    """
    codes: torch.Tensor
    qscales: torch.Tensor
    qzeros: torch.Tensor
    Q: torch.Tensor
    W_hat: torch.Tensor
    scales: torch.Tensor
    best_ratio: float
    loss_history: torch.Tensor
    x_mean_abs: torch.Tensor
    clip_max_val: torch.Tensor
    clip_only_max_val: torch.Tensor
    errors: dict
    bits: int | None = None
    group_size: int | None = None

    mapping = MAPPING

    @property
    def qtensor(self) -> uniform.QTensor:
        """codes, qscales and qzeros as a :class:`qlearn.uniform.QTensor` (numpy), one block per
        group of ``group_size`` columns."""
        out, cols = self.codes.shape
        gs = cols // self.qscales.shape[1]
        bits = self.bits if self.bits is not None else uniform.MAX_BITS
        return uniform.QTensor(self.codes.numpy(), self.qscales.numpy().astype(np.float32),
                               self.qzeros.numpy().astype(np.int32), bits, False, (1, gs),
                               (out, cols), MAPPING)

    def dequantize(self) -> torch.Tensor:
        """(out, in) float32 ``(codes - qzeros) * qscales`` per group: ``Q``, bit for bit (the
        scaled space; divide by ``scales`` for ``W_hat``)."""
        return torch.from_numpy(self.qtensor.dequantize())


@validate.renamed(w_bit="bits")
def awq_quantize(W, X, bits: int = 4, group_size: int = 128, duo_scaling: bool = False, *,
                 search: AWQScale | None = None, progress: bool = False) -> AWQResult:
    """Full AWQ on one linear: scale search, scaling, clip search, final quantization.

    Also runs the ablations (RTN, scale only, clip only) so the four errors can be compared.

    Args:
        W: (out_features, in_features) float32.
        X: (tokens, in_features) float32, at least 512 tokens (the clip search subsamples 512).
        search: a :func:`search_scale` result for the same W, X and settings, to skip the search.

    Returns:
        :class:`AWQResult`.
    """
    W, X = check_pair(W, X)
    bits = check_bits(bits, "bits (formerly w_bit)")
    gs = check_group_size(W.shape[1], group_size)
    if X.shape[0] < N_SAMPLE_TOKEN:
        raise ValueError(f"awq_quantize needs at least {N_SAMPLE_TOKEN} calibration tokens for "
                         f"its clip search, got X with {X.shape[0]} rows (collect more)")
    with torch.no_grad():
        Q_rtn = _pseudo_quantize(W, bits, gs)[0]
        sc = search if search is not None else search_scale(W, X, bits, gs, duo_scaling,
                                                            progress=progress)
        if sc.scales.shape != (W.shape[1],):
            raise ValueError(f"search.scales must have shape ({W.shape[1]},), got "
                             f"{tuple(sc.scales.shape)} (pass the search of this layer)")
        s_row = sc.scales.view(1, -1)
        Ws, Xs = W * s_row, X / s_row
        Q_scale = _pseudo_quantize(Ws, bits, gs)[0]
        clip_only = search_clip(W, X, bits, gs, progress=progress)
        Q_clip = _pseudo_quantize(apply_clip(W, clip_only), bits, gs)[0]
        clip = search_clip(Ws, Xs, bits, gs, progress=progress)
        Q, codes, qscales, qzeros = _pseudo_quantize(apply_clip(Ws, clip), bits, gs)
        errors = {"rtn": output_error(X, W, Q_rtn),
                  "scale_only": output_error(X, W, Q_scale, Xs),
                  "clip_only": output_error(X, W, Q_clip),
                  "full": output_error(X, W, Q, Xs)}
    return AWQResult(codes, qscales, qzeros, Q, Q / s_row, sc.scales, sc.best_ratio,
                     sc.loss_history, sc.x_mean_abs, clip, clip_only, errors, bits, gs)


# --- a whole model (structure comes from qlearn.adapters) -------------------------------------

def _capture_layer_inputs(layer: torch.nn.Module, h: torch.Tensor, linears: dict) -> tuple:
    """Run ``layer(h)`` once; return its output and ``{name: input (batch, seq, in)}`` of its linears."""
    seen, handles = {}, []
    for name, lin in linears.items():
        handles.append(lin.register_forward_pre_hook(
            lambda mod, args, name=name: seen.__setitem__(name, args[0].detach().clone())))
    try:
        out = layer(h)
    finally:
        for hd in handles:
            hd.remove()
    return out, seen


def _fold_scales(prev: torch.nn.Module, linears, s: torch.Tensor) -> None:
    """Divide the output of ``prev`` by s and multiply the input columns of ``linears`` by s.

    prev: a norm (weight, optional bias /= s) or an nn.Linear (its LAST len(s) output rows and bias
    /= s, as upstream ``scale_fc_fc``).
    """
    if isinstance(prev, torch.nn.Linear):
        prev.weight[-s.numel():].div_(s.view(-1, 1))
        if prev.bias is not None:
            prev.bias[-s.numel():].div_(s)
    else:
        prev.weight.div_(s)
        if getattr(prev, "bias", None) is not None:
            prev.bias.div_(s)
    for fc in linears:
        fc.weight.mul_(s.view(1, -1))


NO_CLIP = ("q_proj", "k_proj")  # upstream skips the clip search where attention logits are sensitive


@validate.renamed(w_bit="bits")
def awq_model(model: torch.nn.Module, tokens: torch.Tensor, bits: int = 4, group_size: int = 128,
              duo_scaling: bool = False, clip: bool = True, progress: bool = True):
    """AWQ for a whole decoder (llm-awq's ``run_awq`` + ``pseudo_quantize_model_weight``).

    Layer by layer: capture the inputs of the layer's linears on the calibration tokens, search one
    scale vector per scale group (``qlearn.adapters.scale_groups``: norm -> q,k,v inspecting the
    attention, norm -> gate,up inspecting the MLP, up -> down, v -> o when shapes allow), fold the
    scales into the previous norm/linear, clip-search every linear except q/k on the scaled weights
    and scaled inputs, and pass the *unquantized* layer's output on. Finally every linear of
    ``find_linears`` (not lm_head) is replaced by its AWQ pseudo-quantized weight.

    Args:
        model: a decoder with the Llama names of ``qlearn.adapters``; left untouched.
        tokens: (batch, seq) int64 calibration tokens (>= 512 tokens when ``clip``).
    Returns:
        ``(quantized deep copy, {"layers.i.<group name>": best ratio})``.
    """
    import copy

    from qlearn import adapters

    tokens = validate.model_tokens(model, tokens, "tokens", ndim=2)
    validate.bits(bits, "bits", *validate.BITS_RANGE["awq"])
    for name in ("duo_scaling", "clip", "progress"):
        validate.flag(locals()[name], name)
    for fc in adapters.find_linears(model).values():
        check_group_size(fc.in_features, group_size)
    if clip and tokens.numel() < N_SAMPLE_TOKEN:
        raise ValueError(f"the clip search needs at least {N_SAMPLE_TOKEN} calibration tokens, got "
                         f"{tokens.numel()} (pass more text, or clip=False)")
    q = copy.deepcopy(model).eval()
    ratios = {}
    with torch.no_grad():
        h = q.embed_tokens(tokens.long())
        layers = adapters.decoder_layers(q)
        for i, layer in enumerate(tqdm(layers, desc=f"AWQ w{bits}g{group_size}", disable=not progress)):
            named = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
            h_next, inputs = _capture_layer_inputs(layer, h, named)
            by_module = {id(m): n for n, m in named.items()}
            plans = []
            for g in adapters.scale_groups(layer):
                x3 = inputs[by_module[id(g.linears[0])]]
                X = x3.reshape(-1, x3.shape[-1])

                def forward(ws, g=g, x3=x3):
                    saved = [fc.weight.data for fc in g.linears]
                    for fc, w in zip(g.linears, ws):
                        fc.weight.data = w
                    try:
                        return g.inspect(x3)
                    finally:
                        for fc, w in zip(g.linears, saved):
                            fc.weight.data = w

                sc = search_scale([fc.weight.data for fc in g.linears], X, bits, group_size,
                                  duo_scaling, forward=forward)
                ratios[f"layers.{i}.{g.name}"] = sc.best_ratio
                plans.append((g, sc.scales))
            for g, s in plans:  # apply after all searches, as upstream
                _fold_scales(g.prev, g.linears, s)
                for fc in g.linears:
                    n = by_module[id(fc)]
                    inputs[n] = inputs[n] / s
            if clip:
                for n, fc in named.items():
                    if n.rsplit(".", 1)[-1] in NO_CLIP:
                        continue
                    x = inputs[n].reshape(-1, fc.in_features)
                    fc.weight.data = apply_clip(fc.weight.data, search_clip(fc.weight.data, x, bits, group_size))
            h = h_next
        for fc in adapters.find_linears(q).values():
            fc.weight.data = _pseudo_quantize(fc.weight.data, bits, check_group_size(fc.in_features, group_size))[0]
    return q, ratios


@validate.renamed(w_bit="bits")
def rtn_model(model: torch.nn.Module, bits: int = 4, group_size: int = 128) -> torch.nn.Module:
    """Round-to-nearest baseline with AWQ's quantizer on every linear (deep copy; lm_head kept)."""
    from qlearn import adapters

    validate.module(model, decoder=True)
    validate.bits(bits, "bits", *validate.BITS_RANGE["awq"])
    for fc in adapters.find_linears(model).values():
        check_group_size(fc.in_features, group_size)
    return adapters.fake_quantize_linears(model, lambda W: pseudo_quantize(W, bits, group_size)[0])
