"""TEMPORARY stand-in for :mod:`qlearn.adapters` (helper "models"), used by :func:`qlearn.gptq.gptq_model`
only while ``qlearn.adapters`` is not on main. Same contract, Llama naming, nothing more. Delete this
file once ``qlearn.adapters`` is merged (gptq imports the real module first).
"""

from __future__ import annotations

import torch
from torch import nn

LAYER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    if getattr(model, "layers", None) is None:
        raise ValueError(f"expected a model with a `layers` list (Llama naming), got {type(model).__name__}")
    return list(model.layers)


def find_linears(model: nn.Module, include_lm_head: bool = False) -> dict[str, nn.Linear]:
    out = {f"layers.{i}.{sub}": layer.get_submodule(sub)
           for i, layer in enumerate(decoder_layers(model)) for sub in LAYER_LINEARS}
    if include_lm_head:
        out["lm_head"] = model.lm_head
    return out


class _Stop(Exception):
    pass


@torch.no_grad()
def capture_inputs(model: nn.Module, tokens: torch.Tensor, names) -> dict[str, torch.Tensor]:
    modules = find_linears(model)
    names = list(names)
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(mod, args):
            captured[name] = args[0].reshape(-1, args[0].shape[-1]).float().clone()
            if len(captured) == len(names):
                raise _Stop
        return hook

    handles = [modules[n].register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        model(torch.as_tensor(tokens).long().reshape(-1, torch.as_tensor(tokens).shape[-1]))
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return {n: captured[n] for n in names}
