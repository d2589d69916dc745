"""One vocabulary: each idea has one keyword name across qlearn.

``bits`` for a bit width, ``group_size`` for weights per scale (``block_size`` where it is a
tuple, as in :mod:`qlearn.uniform`), ``qtype`` for a quantized number type, ``granularity`` for
per-tensor/per-channel/per-token. Old names keep working as deprecated aliases (a
DeprecationWarning, the same result). Functions that mirror an upstream API by name
(bitsandbytes' ``blocksize=``/``quant_type=``, the GPTQ reference's lazy-batch ``blocksize=``)
keep the upstream keyword without a warning, and the bitsandbytes mirrors also accept the
project names.
"""

from __future__ import annotations

import importlib
import inspect
import warnings

import numpy as np
import pytest
import torch

from qlearn import awq, blocktypes, nf4, qlora, smoothquant
from qlearn.explorers import nf4 as nf4_explorer

# keyword -> the project's name for the idea
RETIRED = {"w_bit": "bits", "n_bits": "bits", "mode": "granularity", "quant_type": "qtype",
           "blocksize": "group_size"}
# (module, function) pairs that mirror an upstream API by name and may keep its keyword
UPSTREAM_MIRRORS = {
    ("qlearn.nf4", "quantize_4bit"), ("qlearn.nf4", "fake_quantize_4bit"),
    ("qlearn.nf4", "bits_per_weight"), ("qlearn.nf4", "Linear4bit.from_linear"),
    ("qlearn.explorers.nf4", "summary"), ("qlearn.explorers.nf4", "plot_4bit"),
    ("qlearn.blocktypes", "nf4_type"),
    # GPTQ's lazy-batch width (columns updated together), the reference's fasterquant(blocksize=)
    ("qlearn.gptq", "gptq_quantize"), ("qlearn.gptq", "gptq_model"),
}
MODULES = ["adapters", "awq", "blocktypes", "calibration", "checkpoint", "deploy", "export",
           "formats", "gguf_io", "gguf_mixes", "gptq", "imatrix", "kernels", "kquants", "kvcache",
           "llm_int8", "lora", "memory", "nf4", "qat", "qlora", "smoothquant", "speed", "uniform",
           "validate", "models", "models.evaluate", "models.quantized", "models.llama",
           "explorers.nf4", "explorers.kquants"]


def _public_callables():
    for m in MODULES:
        mod = importlib.import_module(f"qlearn.{m}")
        for name in getattr(mod, "__all__", [n for n in vars(mod) if not n.startswith("_")]):
            obj = getattr(mod, name, None)
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    fn = getattr(member, "__func__", member)
                    if not attr.startswith("_") and inspect.isfunction(fn):
                        yield mod.__name__, f"{name}.{attr}", fn
            elif inspect.isfunction(obj) and obj.__module__ == mod.__name__:
                yield mod.__name__, name, obj


def test_retired_keyword_names_appear_only_in_upstream_mirrors():
    found = []
    for mod, name, fn in _public_callables():
        params = set(inspect.signature(fn).parameters)
        for old in params & set(RETIRED):
            if (mod, name) not in UPSTREAM_MIRRORS:
                found.append(f"{mod}.{name}({old}=) should be {RETIRED[old]}=")
    assert not found, "\n".join(found)


def _W(rows=4, cols=64, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((rows, cols))
                            .astype(np.float32))


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _tiny_decoder():
    from qlearn.models import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    return LlamaModel(LlamaConfig(vocab_size=64, dim=64, n_layers=1, n_heads=2, n_kv_heads=1,
                                  ffn_dim=128, max_seq_len=16)).eval()


def _quantized_base(**kw):
    m = qlora.quantize_base(_tiny_decoder(), **kw)
    return [m.layers[0].get_submodule(n).weight() for n in ("mlp.up_proj", "self_attn.q_proj")]


DEPRECATED = [
    ("awq.pseudo_quantize w_bit", lambda **k: awq.pseudo_quantize(_W(), group_size=16, **k),
     dict(w_bit=3), dict(bits=3)),
    ("smoothquant.absmax_fake_quant n_bits",
     lambda **k: smoothquant.absmax_fake_quant(_W(), "per_channel", **k),
     dict(n_bits=6), dict(bits=6)),
    ("smoothquant.absmax_fake_quant mode",
     lambda **k: smoothquant.absmax_fake_quant(_W(), **k),
     dict(mode="per_token"), dict(granularity="per_token")),
    ("qlora.quantize_base quant_type, blocksize", _quantized_base,
     dict(quant_type="fp4", blocksize=32), dict(qtype="fp4", group_size=32)),
]


@pytest.mark.parametrize("what, call, old, new", DEPRECATED, ids=[d[0] for d in DEPRECATED])
def test_old_names_warn_and_give_the_same_result(what, call, old, new):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        want = call(**new)                                    # the new name: no warning
    with pytest.warns(DeprecationWarning) as caught:
        got = call(**old)
    messages = " ".join(str(w.message) for w in caught)
    assert all(f"{k}=" in messages for k in old), messages   # one warning per old name
    assert _same(got, want), what


def _linear4bit(**kw):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 8)
    return nf4.Linear4bit.from_linear(lin, **kw).weight()


MIRRORS = [
    ("nf4.quantize_4bit", lambda **k: nf4.quantize_4bit(_W(), **k)),
    ("nf4.fake_quantize_4bit", lambda **k: nf4.fake_quantize_4bit(_W(), **k)),
    ("nf4.Linear4bit.from_linear", _linear4bit),
    ("explorers.nf4.summary", lambda **k: nf4_explorer.summary(_W().numpy(), **k)["rel_mse"]),
]


def _as_comparable(x):
    if isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], nf4.QuantState):
        return (x[0], x[1].absmax)
    return x


@pytest.mark.parametrize("what, call", MIRRORS, ids=[m[0] for m in MIRRORS])
def test_upstream_mirrors_take_both_names_without_a_warning(what, call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        upstream = call(blocksize=128, quant_type="fp4")
        project = call(group_size=128, qtype="fp4")
    assert _same(_as_comparable(upstream), _as_comparable(project)), what
    with pytest.raises(TypeError, match="both blocksize= and group_size="):
        call(blocksize=128, group_size=128)


def test_mirrors_with_only_a_block_size():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nf4.bits_per_weight(blocksize=128) == nf4.bits_per_weight(group_size=128)
        assert blocktypes.nf4_type(blocksize=32) == blocktypes.nf4_type(group_size=32)
