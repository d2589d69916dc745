"""Run a model on GGUF block bytes: ``quantize_for_inference(model, "Q4_K" | "Q4_K_M" | ...)``.

Every linear (found by :mod:`qlearn.adapters`) becomes a :class:`QuantizedLinear` that holds the
weight as GGUF block bytes (``uint8 (out_features, row_bytes)``, what llama-quantize writes) and
never stores a float32 copy. Its forward pass picks one of two paths, as llama.cpp's CPU backend
does:

- **decode** (one token, ``x`` holds a single row): the fused matvec of :mod:`qlearn.kernels`;
  the activations are quantized to 8 bits (Q8_K or Q8_0 blocks) and each block's dot product is
  an integer sum. Types without a fused kernel dequantize cache-sized tiles instead.
- **prefill** (several tokens): dequantize the whole matrix to float32, then one matmul (a
  matrix-matrix product reuses every weight for all tokens, so the dequantization is amortized).

The result equals the model with dequantized weights (``dequantized_model``) exactly on the
prefill path (same float32 weights, same matmul) and within the activation rounding on the decode
path: each activation moves by at most half its block's step, ``max|x_block| / 254``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from qlearn import _cbuild, adapters, gguf_mixes, kernels, validate

__all__ = ["QuantizedLinear", "BF16Linear", "quantize_for_inference", "dequantized_model", "gguf_name",
           "weight_bytes"]

# qlearn (Hugging Face) linear names -> GGUF tensor names, for llama.cpp's mix rules
_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
FLOAT_TYPES = ("F32", "F16")  # what llama.cpp's rules may leave unquantized


def gguf_name(name: str, tied_embeddings: bool = False) -> tuple[str, int | None]:
    """("blk.3.attn_v.weight", 3) for "layers.3.self_attn.v_proj"; the LM head is
    "output.weight", or "token_embd.weight" when it shares the embedding's matrix."""
    if name == "lm_head":
        return ("token_embd.weight" if tied_embeddings else "output.weight"), None
    _, i, sub = name.split(".", 2)
    return f"blk.{i}.{_GGUF_NAMES[sub]}.weight", int(i)


class _ActivationCache:
    """The last quantized activation, shared by the linears of one model.

    q/k/v (and gate/up) read the same tensor: it is quantized once, not three times. The key is
    the tensor object itself (kept alive here, so its id cannot be reused), its version counter
    (bumped by any in-place write) and the activation format ("q8_K" or "q8_0", and the
    backend). The compiled path quantizes into buffers kept here (one set per format and
    length), so a decode step allocates nothing but the linears' outputs.
    """

    def __init__(self):
        self.x, self.version, self.kind, self.value = None, -1, None, None
        self._buffers = {}

    def buffers(self, q8_0: bool, cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(xq int8 (cols,), xd float32 (blocks,), bs32 int32 (cols // 32,)) for one format."""
        key = (q8_0, cols)
        if key not in self._buffers:
            block = kernels.QK_LEGACY if q8_0 else kernels.QK_K
            self._buffers[key] = (torch.empty(cols, dtype=torch.int8),
                                  torch.empty(cols // block, dtype=torch.float32),
                                  torch.empty(cols // 32, dtype=torch.int32))
        return self._buffers[key]


class QuantizedLinear(nn.Module):
    """A bias-free linear whose weight is GGUF block bytes of one ggml type.

    q: (out_features, row_bytes) uint8; qtype: a name in ``kernels.SUPPORTED``.
    forward: x (..., in_features) float32 -> (..., out_features) float32.
    parallel: threads for the decode matvec (False: one thread; True: numba's thread count).
    The decode matvec runs on :func:`qlearn.kernels.backend` as it was when the linear was made
    ("c", the compiled kernels, or "numba").
    """

    def __init__(self, q: np.ndarray, qtype: str, in_features: int, parallel: bool = False,
                 bias: torch.Tensor | None = None, act_cache: _ActivationCache | None = None):
        super().__init__()
        name, q, cols = kernels._check_q(q, qtype)
        if cols != in_features:
            raise ValueError(f"{name} bytes of {q.shape[1]} per row hold {cols} weights, "
                             f"but in_features is {in_features}")
        self._q = torch.from_numpy(q)  # the one copy of the bytes (a deepcopy copies it once)
        self.qtype = name
        self.in_features, self.out_features = in_features, q.shape[0]
        self.parallel = bool(parallel)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.fused = name in kernels.MATVEC_TYPES
        self._act = act_cache or _ActivationCache()
        self._c = None
        if self.fused:
            self._q8_0 = name in kernels._Q8_0_ACTIVATIONS
            self._kind = ("q8_0" if self._q8_0 else "q8_K", kernels.backend())
            self._kernel = kernels.fused_kernel(name, parallel=self.parallel)
            if self._kind[1] == "c":  # (type id, threads); no ctypes objects: deepcopy works
                self._c = (kernels._TID[name], kernels._threads(self.parallel))

    @property
    def q(self) -> np.ndarray:
        """(out_features, row_bytes) uint8: the GGUF block bytes."""
        return self._q.numpy()

    @classmethod
    def from_linear(cls, linear: nn.Linear, qtype: str, parallel: bool = False,
                    act_cache: _ActivationCache | None = None) -> "QuantizedLinear":
        """Quantize ``linear.weight`` with ``qlearn.kquants.quantize`` (ggml's quantizers)."""
        from qlearn import kquants

        W = linear.weight.detach().float().contiguous().numpy()
        return cls(kquants.quantize(W, qtype), qtype, linear.in_features, parallel,
                   linear.bias, act_cache)

    def dequantized_weight(self) -> torch.Tensor:
        """(out_features, in_features) float32: exactly the weights the kernels multiply by."""
        return torch.from_numpy(kernels.dequantize(self.q, self.qtype, parallel=False))

    @property
    def nbytes(self) -> int:
        """Bytes of weight data read per forward pass."""
        return int(self._q.numel())

    def _decode_c(self, x: torch.Tensor) -> torch.Tensor:
        """One token on the compiled kernels: x (in_features,) float32 -> (out_features,)."""
        tid, nthreads = self._c
        lib = _cbuild.load()
        act, cols = self._act, self.in_features
        if not (act.x is x and act.version == x._version and act.kind == self._kind):
            xq, xd, bs = act.value = act.buffers(self._q8_0, cols)
            xc = x.detach().reshape(-1).contiguous()
            lib.qlearn_quantize_q8(kernels.ACT_KIND[self._q8_0], xc.data_ptr(), cols, xq.data_ptr(),
                     xd.data_ptr(), bs.data_ptr())
            act.x, act.version, act.kind = x, x._version, self._kind
        xq, xd, bs = act.value
        y = torch.empty(self.out_features, dtype=torch.float32)
        q = self._q
        lib.qlearn_matvec(tid, q.data_ptr(), q.shape[0], q.shape[1], cols, xq.data_ptr(), xd.data_ptr(),
               bs.data_ptr(), y.data_ptr(), nthreads)
        return y

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        """One token: x (in_features,) float32 -> y (out_features,) float32."""
        if self._c is not None:
            return self._decode_c(x)
        xv = x.detach().reshape(-1).contiguous().numpy()
        if not self.fused:  # no q8 kernel for this type: dequantize tiles, float32 BLAS
            return torch.from_numpy(kernels.matvec(self.q, self.qtype, xv, activations="f32",
                                                   parallel=self.parallel))
        act = self._act
        if act.x is x and act.version == x._version and act.kind == self._kind:
            xq, xd, bs32 = act.value  # the same input as the previous linear (q/k/v, gate/up)
        else:
            xq, xd, bs32 = act.value = kernels.quantize_activations(xv, self.qtype)
            act.x, act.version, act.kind = x, x._version, self._kind
        y = np.empty(self.out_features, dtype=np.float32)
        self._kernel(self.q, xq, xd, bs32, y)
        return torch.from_numpy(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.shape[-1] != self.in_features:
            raise ValueError(f"expected a float32 tensor (..., {self.in_features}), got "
                             f"{x.dtype} {tuple(x.shape)}")
        if x.numel() == self.in_features:  # decode: one token, the fused matvec
            out = self._decode(x).view(*x.shape[:-1], self.out_features)
        else:  # prefill: dequantize, then one float32 matmul for every token
            out = torch.nn.functional.linear(x, self.dequantized_weight())
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype}, "
                f"bytes={self.nbytes}")


class BF16Linear(nn.Module):
    """A linear stored in bfloat16 (2 bytes per weight) and computed by ``torch`` in bfloat16
    (the input rounded to bfloat16, float32 out): the 16-bit baseline of chapter 13.

    forward: x (..., in_features) float32 -> (..., out_features) float32.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16).clone(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(
            linear.bias.detach().to(torch.bfloat16).clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.to(torch.bfloat16), self.weight, self.bias).float()


def _plan(model: nn.Module, qtype_or_mix: str, include_lm_head: bool) -> dict[str, str]:
    """{linear name: ggml type or "F32"/"F16"} for a single type or a llama.cpp mix."""
    if not isinstance(qtype_or_mix, str):
        raise ValueError(f"qtype_or_mix must be a type name such as 'Q4_K' or a mix such as "
                         f"'Q4_K_M', got {qtype_or_mix!r}")
    linears = adapters.find_linears(model, include_lm_head=include_lm_head)
    cfg = getattr(model, "config", None)
    tied = bool(getattr(cfg, "tie_embeddings", False))
    if qtype_or_mix in gguf_mixes.MIXES:
        n_layers = len(adapters.decoder_layers(model))
        n_gqa = cfg.n_heads // cfg.n_kv_heads if cfg is not None else 1
        plan = {}
        for name, lin in linears.items():
            gname, i = gguf_name(name, tied)
            plan[name] = gguf_mixes.tensor_type(qtype_or_mix, gname, i, n_layers, n_gqa=n_gqa,
                                                tied_embeddings=tied, n_cols=lin.in_features)
        return plan
    up = qtype_or_mix.upper()
    if up == "BF16":
        return {name: "BF16" for name in linears}
    if up not in kernels.SUPPORTED:
        raise ValueError(f"unknown qtype_or_mix {qtype_or_mix!r}: expected a type in "
                         f"{', '.join(kernels.SUPPORTED)}, BF16, or a mix in {', '.join(gguf_mixes.MIXES)}")
    plan = {}
    for name, lin in linears.items():
        t = up
        if lin.in_features % kernels.block_info(t)[0]:  # llama.cpp's row-length fallback
            t = gguf_mixes._FALLBACK.get(t, "F16")
            if t in FLOAT_TYPES or lin.in_features % kernels.block_info(t)[0]:
                t = "F16"
        plan[name] = t
    return plan


@torch.no_grad()
def quantize_for_inference(model: nn.Module, qtype_or_mix: str, *, include_lm_head: bool = True,
                           parallel: bool = False) -> nn.Module:
    """A copy of ``model`` whose linears hold GGUF block bytes and run qlearn's CPU kernels.

    qtype_or_mix: one ggml type for every linear ("Q4_K", "Q6_K", "Q8_0", ..., with llama.cpp's
        fallback when a row length is not a multiple of the block: Q4_K -> Q5_0, Q6_K -> Q8_0)
        or a llama.cpp mix ("Q4_K_M", ...: per-tensor types by :mod:`qlearn.gguf_mixes`), or
        "BF16" (every linear a :class:`BF16Linear`, the 16-bit baseline).
        Tensors a mix leaves in F16 stay float linears (rounded through float16).
    include_lm_head: quantize the LM head too (llama.cpp does; with tied embeddings the input
        embedding stays float32 for the row lookup).
    parallel: numba threads for the decode matvecs.
    The input model is not modified. ``model.qtypes`` on the result maps linear name -> type.
    """
    validate.module(model, decoder=True)
    validate.flag(include_lm_head, "include_lm_head")
    validate.flag(parallel, "parallel")
    plan = _plan(model, qtype_or_mix, include_lm_head)
    qmodel = copy.deepcopy(model)
    qmodel.eval()
    act = _ActivationCache()

    def make(name, lin):
        t = plan[name]
        if t == "BF16":
            return BF16Linear(lin)
        if t in FLOAT_TYPES:
            new = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
            w = lin.weight.detach()
            w = w.half().float() if t == "F16" else w.float().clone()  # F16: rounded as stored
            new.weight = nn.Parameter(w, requires_grad=False)
            if lin.bias is not None:
                new.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
            return new
        return QuantizedLinear.from_linear(lin, t, parallel, act)

    adapters.replace_linears(qmodel, make, names=list(plan))
    qmodel.qtypes = plan
    return qmodel


class _RoundedInputLinear(nn.Module):
    """Reference for the decode path: ``W @ round_q8(x)`` in float64, W the dequantized weights.

    A one-token input (what the fused path handles) is quantized to the 8-bit activation format
    of the weight type (Q8_K blocks of 256 for k-quants, Q8_0 blocks of 32 for Q8_0/Q5_0) and
    dequantized again, exactly the operand the fused kernels multiply by. Several tokens (the
    prefill path) are multiplied in float32 like ``nn.Linear``.
    """

    def __init__(self, weight: torch.Tensor, qtype: str, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = bias
        self.q8_0 = qtype in kernels._Q8_0_ACTIVATIONS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() != x.shape[-1]:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        rows = x.detach().reshape(-1, x.shape[-1]).numpy()
        xh = np.empty(rows.shape, dtype=np.float64)
        for r, v in enumerate(rows):
            if self.q8_0:
                qs, d = kernels.quantize_q8_0(np.ascontiguousarray(v))
                block = kernels.QK_LEGACY
            else:
                qs, d, _ = kernels.quantize_q8_k(np.ascontiguousarray(v))
                block = kernels.QK_K
            xh[r] = qs.astype(np.float64) * np.repeat(d.astype(np.float64), block)
        y = xh @ self.weight.detach().double().numpy().T
        out = torch.from_numpy(y.astype(np.float32)).reshape(*x.shape[:-1], -1)
        return out if self.bias is None else out + self.bias


def dequantized_model(qmodel: nn.Module, activations: str = "f32") -> nn.Module:
    """A float copy of a :func:`quantize_for_inference` model, the reference it is tested with.

    Each QuantizedLinear becomes a linear holding its exact dequantized weights (float32).
    activations: "f32" (an ``nn.Linear``: the prefill path equals it exactly) or "q8" (a
        one-token input rounded to the kernels' 8-bit activation format first, products in
        float64: the decode path equals it up to float32 rounding; several tokens as "f32";
        types without a fused kernel, whose decode path keeps float32 activations, stay
        ``nn.Linear``).
    """
    if activations not in ("f32", "q8"):
        raise ValueError(f"activations must be 'f32' or 'q8', got {activations!r}")
    names = [n for n, m in adapters.find_linears(qmodel, include_lm_head=True).items()
             if isinstance(m, QuantizedLinear)]
    if not names:
        raise ValueError("expected a model returned by quantize_for_inference (no QuantizedLinear found)")
    ref = copy.deepcopy(qmodel)

    def make(name, ql):
        bias = None if ql.bias is None else ql.bias.detach().clone()
        if activations == "q8" and ql.fused:
            return _RoundedInputLinear(ql.dequantized_weight(), ql.qtype, bias)
        lin = nn.Linear(ql.in_features, ql.out_features, bias=bias is not None)
        lin.weight = nn.Parameter(ql.dequantized_weight(), requires_grad=False)
        if bias is not None:
            lin.bias = nn.Parameter(bias, requires_grad=False)
        return lin

    return adapters.replace_linears(ref, make, names=names)


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes read per token by each linear: block bytes for QuantizedLinear, 4 (or the
    parameter's element size) per weight for float linears."""
    out = {}
    for name, m in adapters.find_linears(model, include_lm_head=True).items():
        if isinstance(m, QuantizedLinear):
            out[name] = m.nbytes
        elif isinstance(m, BF16Linear):
            out[name] = m.weight.numel() * 2
        else:
            out[name] = m.weight.numel() * m.weight.element_size()
    return out
