"""The only module that knows how a model is built: which linears exist, in what order, and which
ones share an input. Quantization algorithms take tensors (weights, captured inputs) and never look
at model classes; chapters use these helpers to feed them.

Works for :class:`qlearn.models.LlamaModel` and any module with the same (Hugging Face Llama) names:
``embed_tokens``, ``layers[i].{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm,
mlp.{gate,up,down}_proj}``, ``norm``, ``lm_head``.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable

import numpy as np
import torch
from torch import nn

from qlearn import validate

__all__ = ["LAYER_LINEARS", "find_linears", "decoder_layers", "capture_inputs", "replace_linears",
           "fake_quantize_linears", "ScaleGroup", "scale_groups"]

# the seven linears of a decoder layer, in the order the forward pass uses them
LAYER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers in forward order; each is callable as ``layer(h) -> h``, h (batch, seq, dim) float32."""
    validate.module(model)
    layers = getattr(model, "layers", None)
    if layers is None:
        raise ValueError(f"expected a model with a `layers` list of decoder layers (Llama naming), "
                         f"got {type(model).__name__} without one")
    return list(layers)


def find_linears(model: nn.Module, include_lm_head: bool = False) -> dict[str, nn.Linear]:
    """{name: nn.Linear} in forward order by block, e.g. "layers.0.self_attn.q_proj", ..., "layers.0.mlp.down_proj".

    The LM head ("lm_head") is left out unless include_lm_head (quantization methods usually keep it).
    """
    validate.flag(include_lm_head, "include_lm_head")
    out = {}
    for i, layer in enumerate(decoder_layers(model)):
        for sub in LAYER_LINEARS:
            out[f"layers.{i}.{sub}"] = layer.get_submodule(sub)
    if include_lm_head:
        out["lm_head"] = model.lm_head
    return out


def _check_names(model: nn.Module, names, include_lm_head: bool = True) -> list[str]:
    known = find_linears(model, include_lm_head=include_lm_head)
    if names is None:
        return list(find_linears(model))
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple, set, frozenset, dict)) or not names or \
            not all(isinstance(n, str) for n in names):
        raise ValueError(f"names must be a non-empty list of linear names from "
                         f"find_linears(model) (or None for all), got {names!r}")
    names = list(names)
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"unknown linear name(s) {bad}; expected names from find_linears(model), "
                         f"e.g. {list(known)[:3]}")
    return names


class _StopForward(Exception):
    """Raised by a hook once every requested input is captured (skips the rest of the forward pass)."""


@torch.no_grad()
def capture_inputs(model: nn.Module, tokens: torch.Tensor, names) -> dict[str, torch.Tensor]:
    """Inputs seen by the linears ``names`` when the model runs on ``tokens``.

    tokens: (batch, seq) or (seq,) int64. Returns {name: (batch * seq, in_features) float32}, rows in
    token order. The forward pass stops after the last requested linear (hooks are always removed).
    """
    names = _check_names(model, names)
    tokens = validate.model_tokens(model, tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    modules = find_linears(model, include_lm_head=True)
    order = list(modules)
    last = max(order.index(n) for n in names)
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(mod, args):
            x = args[0]
            captured[name] = x.reshape(-1, x.shape[-1]).float().clone()
            if len(captured) == len(set(names)) and order.index(name) == last:
                raise _StopForward
        return hook

    handles = [modules[n].register_forward_pre_hook(hook_for(n)) for n in dict.fromkeys(names)]
    was_training = model.training
    model.eval()
    try:
        model(tokens.long())
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: captured[n] for n in names}


def replace_linears(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module], names=None) -> nn.Module:
    """In place: swap each linear ``name`` (default: all of find_linears) for ``make(name, linear)``. Returns model."""
    names = _check_names(model, names)
    validate.function(make, "make")
    linears = find_linears(model, include_lm_head=True)
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, make(name, linears[name]))
    return model


def fake_quantize_linears(model: nn.Module, quant_dequant: Callable[[torch.Tensor], torch.Tensor],
                          names=None) -> nn.Module:
    """A deep copy of model whose linear weights are replaced by ``quant_dequant(W)``; model is untouched.

    quant_dequant: W (out_features, in_features) float32 Tensor -> W_hat, same shape (any float dtype,
    numpy accepted). names: default every linear of find_linears (not lm_head). A tied lm_head that is
    quantized gets its own copy, so the embedding stays full precision.
    """
    names = _check_names(model, names)
    validate.function(quant_dequant, "quant_dequant")
    q = copy.deepcopy(model)
    linears = find_linears(q, include_lm_head=True)
    with torch.no_grad():
        for name in names:
            lin = linears[name]
            w = lin.weight.detach().float().clone()
            w_hat = quant_dequant(w)
            if not isinstance(w_hat, (torch.Tensor, np.ndarray)) or \
                    not (w_hat.dtype.is_floating_point if isinstance(w_hat, torch.Tensor)
                         else w_hat.dtype.kind == "f"):
                raise ValueError(f"quant_dequant must return a float tensor or array for {name}, "
                                 f"got {type(w_hat).__name__} {getattr(w_hat, 'dtype', '')}")
            w_hat = torch.as_tensor(w_hat)
            if tuple(w_hat.shape) != tuple(w.shape):
                raise ValueError(f"quant_dequant must return the weight's shape {tuple(w.shape)} for {name}, "
                                 f"got {tuple(w_hat.shape)}")
            if not torch.isfinite(w_hat).all():
                raise ValueError(f"quant_dequant must return finite values, got NaN/Inf for {name}")
            lin.weight = nn.Parameter(w_hat.to(torch.float32).reshape(w.shape), requires_grad=False)
    return q


def _has_submodule(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


@dataclasses.dataclass
class ScaleGroup:
    """Linears that read the same input, and the module that produces that input.

    prev: the RMSNorm or linear whose output feeds every linear in ``linears`` (a per-channel scale
    can be folded into it); inspect: the module whose output AWQ compares before/after scaling.
    """

    name: str
    prev: nn.Module
    linears: list
    inspect: nn.Module


def scale_groups(layer: nn.Module) -> list[ScaleGroup]:
    """The scale groups of one decoder layer, as in llm-awq's Llama rules:

    input_layernorm -> q,k,v (inspect self_attn); v_proj -> o_proj (only when v_proj and o_proj have
    the same shape, i.e. no grouped-query attention); post_attention_layernorm -> gate,up (inspect mlp);
    up_proj -> down_proj (inspect down_proj).
    """
    validate.module(layer, "layer")
    missing = [n for n in ("input_layernorm", "post_attention_layernorm", *LAYER_LINEARS)
               if not _has_submodule(layer, n)]
    if missing:
        raise ValueError(f"layer must be a decoder layer with Llama naming, got "
                         f"{type(layer).__name__} without {missing[:3]}")
    a, m = layer.self_attn, layer.mlp
    groups = [ScaleGroup("input_layernorm->q_proj,k_proj,v_proj", layer.input_layernorm,
                         [a.q_proj, a.k_proj, a.v_proj], a)]
    if a.v_proj.weight.shape == a.o_proj.weight.shape:
        groups.append(ScaleGroup("v_proj->o_proj", a.v_proj, [a.o_proj], a.o_proj))
    groups.append(ScaleGroup("post_attention_layernorm->gate_proj,up_proj", layer.post_attention_layernorm,
                             [m.gate_proj, m.up_proj], m))
    groups.append(ScaleGroup("up_proj->down_proj", m.up_proj, [m.down_proj], m.down_proj))
    return groups
