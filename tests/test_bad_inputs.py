"""Bad input to every public function: a ValueError/TypeError from qlearn, never anything else.

Each public function gets a valid call (checked to run) and, argument by argument, malformed
values of the kind a careful user might pass: NaN/Inf, empty, wrong number of dimensions,
integer/bool/complex dtypes, non-arrays, out-of-range or non-integer bit widths and sizes,
NaN/negative/out-of-range float parameters, unknown option names. Hypothesis draws the valid
data and where the bad value goes. Every case must raise ValueError or TypeError

* from qlearn's own code (the innermost frame is in ``qlearn/``, not numpy/numba/torch/gguf),
* with a message that says what came (it contains "got", or names the value it refused),

and never return (a silent acceptance). Corrupt GGUF and safetensors files and inconsistent
quantization states are checked the same way at the end.

``python tests/test_bad_inputs.py`` runs every case once and prints the counts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import linecache
import math
import os
import sys
import tempfile
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlearn import (adapters, awq, calibration, deploy, export, formats, gguf_io, gguf_mixes, gptq,
                    imatrix, kernels, kquants, kvcache, llama_cpp, llm_int8, lora, memory, models,
                    nf4, qat, qlora, smoothquant, speed, uniform)
from qlearn.models import (TINY_TOKENIZER, LlamaConfig, LlamaModel, Tokenizer, evaluate, llama,
                           quantized)

QLEARN_DIR = str(Path(uniform.__file__).parent)


# --- valid base data (small: every call is fast) -------------------------------------------------

def _W(rng, out=32, cols=64):
    return rng.standard_normal((out, cols)).astype(np.float32)


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@dataclasses.dataclass
class Spec:
    """A public function, a builder of valid keyword arguments, and the kind of each argument."""

    name: str
    fn: object
    build: object                 # rng -> dict of valid kwargs
    kinds: dict                   # arg -> kind (a key of MUTATIONS)


def _gptq_result(rng):
    return gptq.rtn_quantize(_t(_W(rng)), 4, 32)


def _packed(rng):
    return gptq.pack_autogptq(_gptq_result(rng), "gptq_v2")


def _nf4_state(rng, compress=True):
    return nf4.quantize_4bit(_W(rng, 4, 64), compress_statistics=compress)


SPECS = [
    # uniform: the core
    Spec("uniform.quantize", uniform.quantize,
         lambda r: dict(x=_W(r), bits=4, block_size=(1, 16), clip=0.9, mapping="asymmetric"),
         dict(x="farr", bits="bits", block_size="block", clip="unit", mapping="choice_opt")),
    Spec("uniform.choose_qparams", uniform.choose_qparams,
         lambda r: dict(x=_W(r), bits=4, block_size=(1, 16), mapping="symmetric_offset",
                        clip=1.0),
         dict(x="farr", bits="bits", block_size="block", mapping="choice", clip="unit")),
    Spec("uniform.quantize_affine", uniform.quantize_affine,
         lambda r: dict(x=_W(r, 4, 8), scale=np.full((4, 1), 0.1, np.float32),
                        zero_point=np.full((4, 1), 3, np.int32), bits=4, block_size=(1, 8),
                        mapping="asymmetric"),
         dict(x="farr", scale="scale", zero_point="zero", bits="bits", block_size="block",
              mapping="choice")),
    Spec("uniform.dequantize_affine", uniform.dequantize_affine,
         lambda r: dict(codes=r.integers(0, 16, (4, 8)).astype(np.uint8),
                        scale=np.full((4, 1), 0.1, np.float32),
                        zero_point=np.full((4, 1), 3, np.int32), block_size=(1, 8),
                        mapping="asymmetric", bits=4),
         dict(codes="codes", scale="scale", zero_point="zero", block_size="block",
              mapping="choice", bits="bits_opt")),
    Spec("uniform.fake_quantize", uniform.fake_quantize,
         lambda r: dict(x=_W(r), bits=8, block_size=None, clip=1.0),
         dict(x="farr", bits="bits", clip="unit")),
    Spec("uniform.sqnr_db", uniform.sqnr_db,
         lambda r: dict(x=_W(r), x_hat=_W(r)), dict(x="farr", x_hat="farr")),
    Spec("uniform.theoretical_sqnr_db", uniform.theoretical_sqnr_db,
         lambda r: dict(bits=4, dist="gaussian", clip=3.0), dict(bits="bits", dist="choice",
                                                                  clip="posf")),
    Spec("uniform.block_size_for", uniform.block_size_for,
         lambda r: dict(shape=(8, 16), granularity="per_group", group_size=4),
         dict(granularity="choice", group_size="size")),
    # GPTQ
    Spec("gptq.find_params", gptq.find_params,
         lambda r: dict(W=_t(_W(r)), bits=4, sym=True),
         dict(W="farr2", bits="bits", sym="flag")),
    Spec("gptq.rtn_quantize", gptq.rtn_quantize,
         lambda r: dict(W=_t(_W(r)), bits=4, group_size=32, sym=False),
         dict(W="farr2", bits="bits", group_size="size", sym="flag")),
    Spec("gptq.gptq_quantize", gptq.gptq_quantize,
         lambda r: dict(W=_t(_W(r, 8, 32)), H=gptq.hessian(_t(_W(r, 64, 32))), bits=4,
                        group_size=-1, blocksize=16, percdamp=0.01),
         dict(W="farr2", H="farr2", bits="bits", group_size="size", blocksize="count",
              percdamp="nonneg")),
    Spec("gptq.hessian", gptq.hessian, lambda r: dict(X=_t(_W(r))), dict(X="farr")),
    Spec("gptq.pack_autogptq", gptq.pack_autogptq,
         lambda r: dict(result=_gptq_result(r), format="gptq_v2", scales_dtype=torch.float16),
         dict(result="object", format="choice", scales_dtype="choice")),
    Spec("gptq.unpack_autogptq", gptq.unpack_autogptq,
         lambda r: dict(packed=_packed(r), format="gptq_v2"),
         dict(packed="packed", format="choice")),
    # AWQ
    Spec("awq.pseudo_quantize", awq.pseudo_quantize,
         lambda r: dict(W=_t(_W(r)), bits=4, group_size=32),
         dict(W="farr2", bits="bits", group_size="size")),
    Spec("awq.search_clip", awq.search_clip,
         lambda r: dict(W=_t(_W(r, 8, 32)), X=_t(_W(r, 16, 32)), bits=4, group_size=16,
                        n_sample_token=8),
         dict(W="farr2", X="farr2", bits="bits", group_size="size")),
    Spec("awq.output_error", awq.output_error,
         lambda r: dict(X=_t(_W(r, 16, 32)), W=_t(_W(r, 8, 32)), W_hat=_t(_W(r, 8, 32))),
         dict(X="farr2", W="farr2", W_hat="farr2")),
    # SmoothQuant
    Spec("smoothquant.absmax_fake_quant", smoothquant.absmax_fake_quant,
         lambda r: dict(t=_t(_W(r)), granularity="per_token", bits=8),
         dict(t="farr2", granularity="choice", bits="bits")),
    Spec("smoothquant.act_scales", smoothquant.act_scales, lambda r: dict(X=_t(_W(r))),
         dict(X="farr2")),
    Spec("smoothquant.smooth_scales", smoothquant.smooth_scales,
         lambda r: dict(act_scales=_t(np.abs(_W(r, 1, 16)[0]) + 1),
                        weight_scales=_t(np.abs(_W(r, 1, 16)[0]) + 1), alpha=0.5),
         dict(act_scales="farr", weight_scales="farr", alpha="unit0")),
    Spec("smoothquant.fake_quant_w8a8", smoothquant.fake_quant_w8a8,
         lambda r: dict(X=_t(_W(r, 8, 16)), W=_t(_W(r, 4, 16)), weight="per_channel",
                        act="per_token"),
         dict(X="farr2", W="farr2", weight="choice", act="choice")),
    # LLM.int8()
    Spec("llm_int8.int8_matmul", llm_int8.int8_matmul,
         lambda r: dict(A=_t(_W(r, 8, 16)), W=_t(_W(r, 4, 16)), threshold=6.0),
         dict(A="farr2", W="farr2", threshold="nonneg")),
    Spec("llm_int8.vectorwise_quant", llm_int8.vectorwise_quant,
         lambda r: dict(A=_t(_W(r, 8, 16)).half(), threshold=2.0),
         dict(A="half2", threshold="nonneg")),
    # calibration
    Spec("calibration.fake_quantize_range", calibration.fake_quantize_range,
         lambda r: dict(x=_W(r), rng=calibration.Range(-1.0, 2.0), bits=4, symmetric=False),
         dict(x="farr", rng="object", bits="bits", symmetric="flag")),
    Spec("calibration.observe", calibration.observe,
         lambda r: dict(x=_W(r), method="percentile", bits=8, symmetric=True),
         dict(x="farr", method="choice", bits="bits", symmetric="flag")),
    Spec("calibration.mse_optimal", calibration.mse_optimal,
         lambda r: dict(x=_W(r), bits=4), dict(x="farr", bits="bits")),
    Spec("calibration.layer_output_error", calibration.layer_output_error,
         lambda r: dict(x=_W(r, 8, 16), W=_W(r, 4, 16), rng=calibration.Range(-2.0, 2.0),
                        bits=8), dict(x="farr2", W="farr2", rng="object", bits="bits")),
    Spec("calibration.outlier_channels", calibration.outlier_channels,
         lambda r: dict(x=_W(r), ratio=6.0), dict(x="farr2", ratio="posf")),
    # bitsandbytes 4-bit
    Spec("nf4.quantize_4bit", nf4.quantize_4bit,
         lambda r: dict(x=_W(r, 4, 64), blocksize=64, quant_type="nf4",
                        compress_statistics=True),
         dict(x="farr", blocksize="choice", quant_type="choice", compress_statistics="flag")),
    Spec("nf4.dequantize_4bit", nf4.dequantize_4bit,
         lambda r: dict(zip(("packed", "state"), _nf4_state(r))),
         dict(packed="codes", state="object")),
    Spec("nf4.bits_per_weight", nf4.bits_per_weight,
         lambda r: dict(blocksize=64, compress_statistics=False),
         dict(blocksize="choice")),
    # GGUF blocks and kernels
    Spec("kquants.quantize", kquants.quantize,
         lambda r: dict(x=_W(r, 2, 256), qtype="Q4_K"), dict(x="farr2", qtype="choice")),
    Spec("kquants.dequantize", kquants.dequantize,
         lambda r: dict(q=kquants.quantize(_W(r, 2, 256), "Q4_K"), qtype="Q4_K"),
         dict(q="codes", qtype="choice")),
    Spec("kernels.dequantize", kernels.dequantize,
         lambda r: dict(q=kquants.quantize(_W(r, 2, 256), "Q6_K"), qtype="Q6_K"),
         dict(q="codes", qtype="choice")),
    Spec("kernels.quantize_q8_0", kernels.quantize_q8_0, lambda r: dict(x=_W(r, 1, 64)[0]),
         dict(x="farr1")),
    Spec("kernels.quantize_q8_k", kernels.quantize_q8_k, lambda r: dict(x=_W(r, 1, 256)[0]),
         dict(x="farr1")),
    Spec("kernels.matvec", kernels.matvec,
         lambda r: dict(q=kquants.quantize(_W(r, 2, 256), "Q8_0"), qtype="Q8_0",
                        x=_W(r, 1, 256)[0]),
         dict(q="codes", qtype="choice", x="farr1")),
    Spec("kernels.block_info", kernels.block_info, lambda r: dict(qtype="Q4_K"),
         dict(qtype="choice")),
    Spec("gguf_mixes.bits_per_weight", gguf_mixes.bits_per_weight,
         lambda r: dict(qtype="Q4_K"), dict(qtype="choice")),
    Spec("memory.bits_per_weight", memory.bits_per_weight, lambda r: dict(fmt="Q4_K"),
         dict(fmt="choice")),
    Spec("memory.kv_cache_bytes", memory.kv_cache_bytes,
         lambda r: dict(n_layers=2, n_kv_heads=2, head_dim=8, context=16),
         dict(n_layers="count", n_kv_heads="count", head_dim="count", context="count")),
    Spec("formats.round_to", formats.round_to, lambda r: dict(x=_W(r), fmt="bf16"),
         dict(x="farr_nf", fmt="choice")),
    Spec("uniform.dequantize", uniform.dequantize, lambda r: dict(q=uniform.quantize(_W(r), 4)),
         dict(q="object")),
    Spec("uniform.qparams_from_range", uniform.qparams_from_range,
         lambda r: dict(lo=np.array([-1.0]), hi=np.array([2.0]), bits=4, mapping="asymmetric",
                        clip=0.5), dict(lo="farr", hi="farr", bits="bits", mapping="choice",
                                        clip="unit")),
    Spec("uniform.optimal_clip", uniform.optimal_clip,
         lambda r: dict(bits=3, dist="laplace", symmetric=True),
         dict(bits="bits", dist="choice")),
    Spec("uniform.sample_distribution", uniform.sample_distribution,
         lambda r: dict(dist="student_t", n=100, seed=1, df=5.0),
         dict(dist="choice", n="count", df="posf")),
    Spec("gptq.dequantize", gptq.dequantize,
         lambda r: {k: getattr(_gptq_result(r), k) for k in ("codes", "scales", "zeros", "g_idx")},
         dict(codes="codes", scales="farr2", zeros="farr2")),
    Spec("gptq.relative_output_error", gptq.relative_output_error,
         lambda r: dict(X=_W(r, 16, 64), W=_W(r), Q=_W(r)), dict(X="farr2", W="farr2", Q="farr2")),
    Spec("gptq.synthetic_layer", gptq.synthetic_layer,
         lambda r: dict(seed=0, out_features=8, in_features=16, n_tokens=32, n_outliers=2,
                        outlier_factor=10.0),
         dict(out_features="count", in_features="count", n_tokens="count",
              outlier_factor="posf")),
    Spec("awq.search_scale", awq.search_scale,
         lambda r: dict(W=_t(_W(r, 8, 32)), X=_t(_W(r, 16, 32)), bits=4, group_size=16),
         dict(W="farr2", X="farr2", bits="bits", group_size="size", duo_scaling="flag")),
    Spec("awq.apply_clip", awq.apply_clip,
         lambda r: dict(W=_t(_W(r, 8, 32)), max_val=_t(np.abs(_W(r, 8, 2)))),
         dict(W="farr2", max_val="farr2")),
    Spec("awq.candidate_scales", awq.candidate_scales,
         lambda r: dict(x_mean_abs=_t(np.abs(_W(r, 1, 16)[0])), ratio=0.5),
         dict(x_mean_abs="farr1", ratio="unit0")),
    Spec("smoothquant.weight_scales", lambda Ws: smoothquant.weight_scales(Ws),
         lambda r: {"Ws": _t(_W(r))}, dict(Ws="farr2")),
    Spec("calibration.minmax", calibration.minmax, lambda r: dict(x=_W(r), symmetric=False),
         dict(x="farr", symmetric="flag")),
    Spec("calibration.meanabs", calibration.meanabs, lambda r: dict(x=_W(r), bits=4),
         dict(x="farr", bits="bits", symmetric="flag")),
    Spec("calibration.percentile", calibration.percentile,
         lambda r: dict(x=_W(r), p=99.0, symmetric=True), dict(x="farr", p="pct",
                                                                symmetric="flag")),
    Spec("calibration.kl_entropy", calibration.kl_entropy,
         lambda r: dict(x=_W(r, 64, 64), bits=8, bins=256), dict(x="farr", bits="bits",
                                                                  bins="count")),
    Spec("calibration.sqnr_db", calibration.sqnr_db, lambda r: dict(x=_W(r), x_hat=_W(r)),
         dict(x="farr", x_hat="farr")),
    Spec("calibration.channel_stats", calibration.channel_stats, lambda r: dict(x=_W(r)),
         dict(x="farr2")),
    Spec("calibration.laplace_clip_factor", calibration.laplace_clip_factor,
         lambda r: dict(bits=4), dict(bits="bits")),
    Spec("nf4.fake_quantize_4bit", nf4.fake_quantize_4bit,
         lambda r: dict(x=_W(r, 4, 64), blocksize=64, quant_type="fp4"),
         dict(x="farr", blocksize="choice", quant_type="choice", compress_statistics="flag")),
    Spec("kquants.describe_block", kquants.describe_block,
         lambda r: dict(q=kquants.quantize(_W(r, 2, 256), "Q4_K"), qtype="Q4_K", row=1,
                        block=0), dict(q="codes", qtype="choice", row="index", block="index")),
    Spec("gguf_mixes.mix_plan", gguf_mixes.mix_plan,
         lambda r: dict(mix="Q4_K_M", model_config=gguf_mixes.LLAMA2_7B),
         dict(mix="choice", model_config="object")),
    Spec("memory.weight_memory_bytes", memory.weight_memory_bytes,
         lambda r: dict(n_params=1e9, fmt="Q4_K"), dict(n_params="posf", fmt="choice")),
    Spec("memory.fits_on_gpu", memory.fits_on_gpu,
         lambda r: dict(model="Llama-2-7B", fmt="Q4_K", gpu_memory_gib=24.0, context=4096),
         dict(model="choice", fmt="choice", gpu_memory_gib="posf", context="count")),
    Spec("formats.encode", formats.encode, lambda r: dict(x=_W(r), fmt="fp8_e4m3"),
         dict(x="farr_nf", fmt="choice")),
    Spec("formats.decode", formats.decode,
         lambda r: dict(codes=formats.encode(_W(r), "fp16"), fmt="fp16"),
         dict(codes="codes_any", fmt="choice")),
    Spec("formats.int_range", formats.int_range, lambda r: dict(bits=8, signed=True),
         dict(bits="count", signed="flag")),
    Spec("models.llama.apply_rotary", llama.apply_rotary,
         lambda r: dict(x=_t(_W(r, 8, 16).reshape(1, 2, 4, 16)), cos=_t(_W(r, 4, 8)),
                        sin=_t(_W(r, 4, 8)), style="interleaved"),
         dict(style="choice", cos="farr2")),
]


# --- malformed values by kind ----------------------------------------------------------------------

def _like(valid, arr):
    """``arr`` as the same container (numpy or torch) as ``valid``."""
    return _t(arr) if isinstance(valid, torch.Tensor) else arr


def _np(valid):
    return valid.detach().numpy().copy() if isinstance(valid, torch.Tensor) else np.array(valid)


def _with(value, pos, v):
    a = _np(value).astype(np.float32) if _np(value).dtype.kind == "f" else _np(value)
    a.reshape(-1)[pos % a.size] = v
    return a


ARRAY_BAD = {
    "nan": lambda v, r: _like(v, _with(v, r.integers(1 << 30), np.nan)),
    "inf": lambda v, r: _like(v, _with(v, r.integers(1 << 30), -np.inf)),
    "empty": lambda v, r: _like(v, _np(v)[:0]),
    "int_dtype": lambda v, r: _like(v, np.round(_np(v)).astype(np.int32)),
    "complex": lambda v, r: _np(v).astype(np.complex64),
    "strings": lambda v, r: np.full(_np(v).shape, "a"),
    "not_an_array": lambda v, r: "weights",
    "none": lambda v, r: None,
    "extra_dim": lambda v, r: _like(v, _np(v)[None]),
}
MUTATIONS = {
    "farr": {k: f for k, f in ARRAY_BAD.items() if k != "extra_dim"},
    "farr1": ARRAY_BAD,
    "farr2": ARRAY_BAD,
    "half2": {**{k: f for k, f in ARRAY_BAD.items() if k not in ("complex",)},
              "float32": lambda v, r: v.float()},
    "codes": {"float_codes": lambda v, r: _like(v, _np(v).astype(np.float32)),
              "empty": ARRAY_BAD["empty"], "none": ARRAY_BAD["none"],
              "not_an_array": ARRAY_BAD["not_an_array"],
              "truncated": lambda v, r: _like(v, _np(v).reshape(-1)[:-3])},
    "scale": {"zero": lambda v, r: np.zeros_like(v), "negative": lambda v, r: -v,
              "nan": ARRAY_BAD["nan"], "wrong_count": lambda v, r: np.concatenate([v, v]),
              "strings": ARRAY_BAD["strings"], "none": ARRAY_BAD["none"]},
    "zero": {"fractional": lambda v, r: v + 0.5, "out_of_range": lambda v, r: v + 1000,
             "negative": lambda v, r: v - 1000, "wrong_count": lambda v, r: v[:1],
             "strings": ARRAY_BAD["strings"], "none": ARRAY_BAD["none"]},
    "bits": {"zero": lambda v, r: 0, "one": lambda v, r: 1, "too_many": lambda v, r: 99,
             "negative": lambda v, r: -4, "fractional": lambda v, r: 4.5,
             "bool": lambda v, r: True, "string": lambda v, r: "4", "none": lambda v, r: None},
    "size": {"zero": lambda v, r: 0, "negative": lambda v, r: -7, "fractional": lambda v, r: 2.5,
             "string": lambda v, r: "8", "none": lambda v, r: None,
             "non_divisor": lambda v, r: 7 if v not in (None, -1) else 0},
    "block": {"wrong_length": lambda v, r: (16,), "non_divisor": lambda v, r: (1, 7),
              "zero": lambda v, r: (0, 16), "string": lambda v, r: "per_group",
              "fractional": lambda v, r: (1, 16.5)},
    "unit": {"zero": lambda v, r: 0.0, "negative": lambda v, r: -0.5, "above": lambda v, r: 1.5,
             "nan": lambda v, r: math.nan, "inf": lambda v, r: math.inf,
             "string": lambda v, r: "0.5", "none": lambda v, r: None},
    "posf": {"zero": lambda v, r: 0.0, "negative": lambda v, r: -1.0,
             "nan": lambda v, r: math.nan, "inf": lambda v, r: math.inf,
             "string": lambda v, r: "1", "none": lambda v, r: None},
    "nonneg": {"negative": lambda v, r: -1.0, "nan": lambda v, r: math.nan,
               "inf": lambda v, r: math.inf, "string": lambda v, r: "1",
               "none": lambda v, r: None},
    "choice": {"unknown": lambda v, r: "bogus", "none": lambda v, r: None,
               "number": lambda v, r: 3},
    "flag": {"string": lambda v, r: "yes", "number": lambda v, r: 2, "none": lambda v, r: None},
    "pos_placeholder": {},
    "object": {"wrong_type": lambda v, r: {"not": "it"}, "none": lambda v, r: None,
               "corrupted": lambda v, r: _corrupt(v)},
    "packed": {"missing_key": lambda v, r: {k: t for k, t in v.items() if k != "scales"},
               "float_qweight": lambda v, r: {**v, "qweight": v["qweight"].float()},
               "bad_g_idx": lambda v, r: {**v, "g_idx": v["g_idx"] + 100},
               "short_qzeros": lambda v, r: {**v, "qzeros": v["qzeros"][:, :1]},
               "nan_scales": lambda v, r: {**v, "scales": v["scales"] * math.nan},
               "none": lambda v, r: None},
}


MUTATIONS["pct"] = {"negative": lambda v, r: -1.0, "above": lambda v, r: 101.0,
                    "nan": lambda v, r: math.nan, "string": lambda v, r: "99",
                    "none": lambda v, r: None}
MUTATIONS["index"] = {"negative": lambda v, r: -1, "too_big": lambda v, r: 10 ** 6,
                      "fractional": lambda v, r: 0.5, "string": lambda v, r: "0",
                      "none": lambda v, r: None}
MUTATIONS["codes_any"] = {k: f for k, f in MUTATIONS["codes"].items()
                          if k not in ("truncated", "empty")}
MUTATIONS["count"] = {k: f for k, f in MUTATIONS["size"].items() if k != "non_divisor"}
MUTATIONS["choice_opt"] = {k: f for k, f in MUTATIONS["choice"].items() if k != "none"}
MUTATIONS["bits_opt"] = {k: f for k, f in MUTATIONS["bits"].items() if k != "none"}
MUTATIONS["unit0"] = {k: f for k, f in MUTATIONS["unit"].items() if k != "zero"}
# number formats: NaN, Inf and empty arrays are valid inputs (encoded per the format's rules)
MUTATIONS["farr_nf"] = {k: f for k, f in MUTATIONS["farr"].items()
                        if k not in ("nan", "inf", "empty")}
del MUTATIONS["pos_placeholder"]


# --- model-level functions: a one-layer Llama with qlearn-tiny's tokenizer -----------------------

_CFG = LlamaConfig(vocab_size=4096, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64,
                   max_seq_len=64)
_TOKENIZER = Tokenizer.load(TINY_TOKENIZER)
_TMP = Path(tempfile.mkdtemp(prefix="qlearn-bad-inputs-"))
_TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind. " * 4


def _model(rng=None):
    torch.manual_seed(0)
    return LlamaModel(_CFG).eval()


def _tokens(rng, batch=2, seq=16):
    return torch.as_tensor(rng.integers(0, _CFG.vocab_size, (batch, seq)), dtype=torch.int64)


def _qlora_model(rng):
    m = _model()
    qlora.quantize_base(m, "nf4", 32)
    return m


def _gptq_file(rng):
    p = _TMP / "gptq.safetensors"
    gptq.save_autogptq(p, {"l": _packed(rng)}, 4, 32, True, False)
    return p


def _imatrix_file(rng):
    p = _TMP / "imatrix.gguf"
    imatrix.write_imatrix(p, {"blk.0.ffn_up.weight": np.ones(32, np.float32)}, 64)
    return p


def _forward(model, tokens, cache=None):
    return model(tokens, cache=cache)


def _cache_fmt(rng):
    return kvcache.cache_format("int4", 16, group=16)


SPECS += [
    Spec("gptq.gptq_model", gptq.gptq_model,
         lambda r: dict(model=_model(), calib_tokens=_tokens(r), bits=4, group_size=32,
                        blocksize=16, percdamp=0.01, progress=False),
         dict(model="model", calib_tokens="tokens", bits="bits", group_size="size",
              blocksize="count", percdamp="nonneg", progress="flag")),
    Spec("gptq.save_autogptq", gptq.save_autogptq,
         lambda r: dict(path=_TMP / "save.safetensors", tensors={"l": _packed(r)}, bits=4,
                        group_size=32, sym=True, desc_act=False),
         dict(path="path", tensors="layers", bits="bits", group_size="size", sym="flag",
              desc_act="flag")),
    Spec("gptq.load_autogptq", gptq.load_autogptq, lambda r: dict(path=_gptq_file(r)),
         dict(path="path_in")),
    Spec("awq.awq_model", awq.awq_model,
         lambda r: dict(model=_model(), tokens=_tokens(r), bits=4, group_size=32, clip=False,
                        progress=False),
         dict(model="model", tokens="tokens2", bits="bits", group_size="size",
              duo_scaling="flag", clip="flag", progress="flag")),
    Spec("awq.rtn_model", awq.rtn_model, lambda r: dict(model=_model(), bits=4, group_size=32),
         dict(model="model", bits="bits", group_size="size")),
    Spec("awq.awq_quantize", awq.awq_quantize,
         lambda r: dict(W=_t(_W(r, 8, 32)), X=_t(_W(r, 512, 32)), bits=4, group_size=16),
         dict(W="farr2", X="farr2", bits="bits", group_size="size", duo_scaling="flag")),
    Spec("adapters.find_linears", adapters.find_linears,
         lambda r: dict(model=_model(), include_lm_head=True),
         dict(model="model", include_lm_head="flag")),
    Spec("adapters.decoder_layers", adapters.decoder_layers, lambda r: dict(model=_model()),
         dict(model="model")),
    Spec("adapters.scale_groups", adapters.scale_groups,
         lambda r: dict(layer=_model().layers[0]), dict(layer="model")),
    Spec("adapters.capture_inputs", adapters.capture_inputs,
         lambda r: dict(model=_model(), tokens=_tokens(r), names=["layers.0.mlp.up_proj"]),
         dict(model="model", tokens="tokens", names="names")),
    Spec("adapters.replace_linears", adapters.replace_linears,
         lambda r: dict(model=_model(), make=lambda name, lin: lin,
                        names=["layers.0.mlp.up_proj"]),
         dict(model="model", make="fn", names="names")),
    Spec("adapters.fake_quantize_linears", adapters.fake_quantize_linears,
         lambda r: dict(model=_model(), quant_dequant=lambda w: w.round(),
                        names=["layers.0.mlp.up_proj"]),
         dict(model="model", quant_dequant="fn_out", names="names")),
    Spec("qlora.quantize_base", qlora.quantize_base,
         lambda r: dict(model=_model(), qtype="nf4", group_size=32, compress_statistics=True),
         dict(model="model", qtype="choice", group_size="choice", compress_statistics="flag")),
    Spec("qlora.add_lora", qlora.add_lora,
         lambda r: dict(model=_qlora_model(r), r=4, alpha=8.0, dropout=0.1, seed=0),
         dict(model="model", r="count", alpha="posf", dropout="unit_drop", seed="seed")),
    Spec("qlora.encode", qlora.encode, lambda r: dict(tokenizer=_TOKENIZER, text=_TEXT),
         dict(tokenizer="tok", text="text")),
    Spec("qlora.train", qlora.train,
         lambda r: (lambda m: dict(model=m, tokens=_tokens(r, 1, 80)[0],
                                   params=[p for p in m.parameters()][:2], steps=1, lr=1e-3,
                                   batch=2, seq=8, progress=False))(_model()),
         dict(model="model", tokens="tokens1", steps="count", lr="posf", batch="count",
              seq="count", progress="flag", threads="threads")),
    Spec("qlora.evaluate", qlora.evaluate,
         lambda r: dict(model=_model(), tokens=_tokens(r, 1, 80)[0], batches=1, batch=2, seq=8),
         dict(model="model", tokens="tokens1", batches="count", batch="count", seq="count",
              threads="threads")),
    Spec("qlora.memory_report", qlora.memory_report, lambda r: dict(model=_qlora_model(r)),
         dict(model="model", optimizer="optimizer")),
    Spec("lora.LoRALinear", lora.LoRALinear,
         lambda r: dict(base=torch.nn.Linear(8, 4), r=2, alpha=4.0, dropout=0.0),
         dict(base="linear", r="count", alpha="posf", dropout="unit_drop")),
    Spec("lora.freeze_all_but_lora", lora.freeze_all_but_lora,
         lambda r: (lambda m: qlora.add_lora(m, 2) and dict(model=m))(_model()),
         dict(model="model")),
    Spec("models.load", models.load, lambda r: dict(name="tiny"), dict(name="model_name")),
    Spec("models.perplexity", models.perplexity,
         lambda r: dict(model=_model(), tokenizer=_TOKENIZER, text=_TEXT, ctx=16, stride=8,
                        max_tokens=40),
         dict(model="model", tokenizer="tok", text="text_or_ids", ctx="opt_count",
              stride="opt_count", max_tokens="opt_count", progress="flag")),
    Spec("models.score", models.score,
         lambda r: dict(model=_model(), tokenizer=_TOKENIZER, text=_TEXT, ctx=16),
         dict(model="model", tokenizer="tok", text="text_or_ids", ctx="opt_count")),
    Spec("models.generate", models.generate,
         lambda r: dict(model=_model(), tokenizer=_TOKENIZER, prompt="To be", max_new_tokens=3,
                        temperature=0.8, top_k=5, ctx=16),
         dict(model="model", tokenizer="tok", prompt="text", max_new_tokens="count0",
              temperature="nonneg", top_k="opt_count0", seed="seed", ctx="opt_count",
              stop_at_eos="flag", cache="flag")),
    Spec("models.evaluate.llama_cpp_perplexity", evaluate.llama_cpp_perplexity,
         lambda r: dict(model=_model(), tokenizer=_TOKENIZER, text=_TEXT, n_ctx=8),
         dict(model="model", tokenizer="tok", text="text_or_ids", n_ctx="count")),
    Spec("models.quantized.quantize_for_inference", quantized.quantize_for_inference,
         lambda r: dict(model=_model(), qtype_or_mix="Q8_0", include_lm_head=False),
         dict(model="model", qtype_or_mix="choice", include_lm_head="flag", parallel="flag")),
    Spec("models.quantized.dequantized_model", quantized.dequantized_model,
         lambda r: dict(qmodel=quantized.quantize_for_inference(_model(), "Q8_0",
                                                                include_lm_head=False),
                        activations="q8"),
         dict(qmodel="model", activations="choice")),
    Spec("models.quantized.weight_bytes", quantized.weight_bytes,
         lambda r: dict(model=_model()), dict(model="model")),
    Spec("models.llama.KVCache", llama.KVCache, lambda r: dict(model=_model()),
         dict(model="model")),
    Spec("models.llama.LlamaModel.forward", _forward,
         lambda r: (lambda m: dict(model=m, tokens=_tokens(r), cache=m.new_cache()))(_model()),
         dict(tokens="tokens2", cache="kv_cache")),
    Spec("qat.fake_quantize_ste", qat.fake_quantize_ste,
         lambda r: dict(x=_t(_W(r)), bits=4, block_size=(1, 16), mapping="asymmetric"),
         dict(x="farr2", bits="bits", block_size="block", mapping="choice", clip="unit")),
    Spec("qat.fake_quantize_activations", qat.fake_quantize_activations,
         lambda r: dict(x=_t(_W(r)), bits=8), dict(x="farr", bits="bits")),
    Spec("qat.ternarize", qat.ternarize, lambda r: dict(w=_t(_W(r))), dict(w="farr")),
    Spec("qat.prepare", qat.prepare,
         lambda r: dict(model=_model(), bits=4, group_size=16, method="lsq",
                        activations_bits=8),
         dict(model="model", bits="bits", group_size="opt_size", method="choice",
              activations_bits="bits_opt", mapping="choice", lsq_init="choice")),
    Spec("qat.prepare_bitnet", qat.prepare_bitnet, lambda r: dict(model=_model()),
         dict(model="model")),
    Spec("qat.convert", qat.convert,
         lambda r: dict(model=qat.prepare(_model(), 4, 16)), dict(model="model")),
    Spec("qat.quantized_weights", qat.quantized_weights,
         lambda r: dict(model=qat.prepare(_model(), 4, 16)), dict(model="model")),
    Spec("qat.train", qat.train,
         lambda r: dict(model=qat.prepare(_model(), 4, 16), tokens=_tokens(r, 1, 40)[0],
                        steps=1, lr=1e-3, batch=2, seq=8),
         dict(model="model", tokens="tokens1", steps="count", lr="posf", batch="count",
              seq="count", threads="threads", weight_decay="nonneg")),
    Spec("qat.blockwise_qat", qat.blockwise_qat,
         lambda r: dict(model=_model(), tokens=_tokens(r, 2, 8), bits=4, group_size=16,
                        epochs=1, batch=2, max_layers=1),
         dict(model="model", tokens="tokens2", bits="bits", group_size="opt_size",
              method="choice", mapping="choice", epochs="count", batch="count",
              lr_weight="posf", lr_step="posf", max_layers="opt_count", progress="flag")),
    Spec("kvcache.with_kv_cache", kvcache.with_kv_cache,
         lambda r: dict(model=_model(), k_type="int4", v_type="int8", group=16, residual=2),
         dict(model="model", k_type="choice", v_type="choice", rotate="flag", k_order="choice",
              axis="choice_opt", group="opt_count", symmetric="flag", residual="count0")),
    Spec("kvcache.kivi", kvcache.kivi,
         lambda r: dict(model=_model(), bits=2, group=16, residual=4),
         dict(model="model", bits="bits", group="count", residual="count0")),
    Spec("kvcache.cache_format", kvcache.cache_format,
         lambda r: dict(type="int4", head_dim=16, axis="channel", group=8, residual=2),
         dict(type="choice", head_dim="count", axis="choice", group="opt_count",
              symmetric="flag", residual="count0", rotate="flag")),
    Spec("kvcache.encode", kvcache.encode,
         lambda r: dict(x=_t(_W(r, 8, 16).reshape(1, 2, 4, 16)), fmt=_cache_fmt(r)),
         dict(x="farr", fmt="cache_fmt")),
    Spec("kvcache.decode", kvcache.decode,
         lambda r: dict(stored=kvcache.encode(_t(_W(r, 8, 16).reshape(1, 2, 4, 16)),
                                              _cache_fmt(r)), fmt=_cache_fmt(r), head_dim=16),
         dict(stored="stored", fmt="cache_fmt", head_dim="count")),
    Spec("kvcache.hadamard", kvcache.hadamard, lambda r: dict(n=16), dict(n="count")),
    Spec("kvcache.bytes_per_token", kvcache.bytes_per_token,
         lambda r: dict(k_type="q8_0", v_type="int4", n_layers=2, n_kv_heads=2, head_dim=64,
                        group=32),
         dict(k_type="choice", v_type="choice", n_layers="count", n_kv_heads="count",
              head_dim="count", group="opt_count")),
    Spec("kvcache.cache_bytes", kvcache.cache_bytes,
         lambda r: dict(k_type="f16", v_type="int8", n_layers=2, n_kv_heads=2, head_dim=64,
                        length=100, batch=2, group=64),
         dict(k_type="choice", v_type="choice", n_layers="count", n_kv_heads="count",
              head_dim="count", length="count0", batch="count")),
    Spec("export.to_gguf", export.to_gguf,
         lambda r: dict(model=_model(), path=_TMP / "m.gguf", mix="Q8_0", tokenizer=_TOKENIZER),
         dict(model="model", path="path", mix="choice", imatrix="imatrix_opt",
              tokenizer="tok", pure="flag", name="text")),
    Spec("export.model_config", export.model_config, lambda r: dict(model=_model()),
         dict(model="model")),
    Spec("export.gguf_tensors", export.gguf_tensors, lambda r: dict(model=_model()),
         dict(model="model")),
    Spec("export.tokenizer_metadata", export.tokenizer_metadata,
         lambda r: dict(tokenizer=_TOKENIZER), dict(tokenizer="tok")),
    Spec("export.model_metadata", export.model_metadata,
         lambda r: dict(model=_model(), mix="Q8_0", name="m"),
         dict(model="model", mix="choice", name="text")),
    Spec("imatrix.compute_imatrix", imatrix.compute_imatrix,
         lambda r: dict(activations={"blk.0.ffn_up.weight": _W(r, 8, 32)}),
         dict(activations="imatrix_acts")),
    Spec("imatrix.write_imatrix", imatrix.write_imatrix,
         lambda r: dict(path=_TMP / "w.imatrix.gguf",
                        imatrix={"blk.0.ffn_up.weight": np.ones(32, np.float32)}, n_tokens=64,
                        chunk_size=32),
         dict(path="path", imatrix="imatrix", n_tokens="count", chunk_size="count")),
    Spec("imatrix.read_imatrix", imatrix.read_imatrix, lambda r: dict(path=_imatrix_file(r)),
         dict(path="path_in")),
    Spec("imatrix.compute_model_imatrix", imatrix.compute_model_imatrix,
         lambda r: dict(model=_model(), tokenizer=_TOKENIZER, text=_TEXT, n_ctx=16, n_chunks=2),
         dict(model="model", tokenizer="tok", text="text", n_ctx="count", n_chunks="opt_count")),
    Spec("deploy.recommend", deploy.recommend,
         lambda r: dict(model="Llama-2-7B", memory_gib=8.0, context=2048, batch=1,
                        reserve_gib=0.5, include_unfit=True),
         dict(model="model_size", memory_gib="posf", context="count", batch="count",
              reserve_gib="nonneg", include_unfit="flag")),
    Spec("memory.max_context_that_fits", memory.max_context_that_fits,
         lambda r: dict(model="Llama-2-7B", fmt="Q4_K", gpu_memory_gib=24.0, batch=1),
         dict(model="choice", fmt="choice", gpu_memory_gib="posf", batch="count",
              kv_bytes_per_element="posf", reserve_gib="nonneg")),
    Spec("memory.gib", memory.gib, lambda r: dict(n_bytes=2.0 ** 30), dict(n_bytes="nonneg")),
    Spec("speed.tokens_per_second", speed.tokens_per_second,
         lambda r: dict(model=_model(), prompt=_tokens(r, 1, 4)[0], new_tokens=2, repeats=1),
         dict(model="model", prompt="tokens", new_tokens="count", repeats="count",
              cpu_time="flag")),
    Spec("speed.decode_time_split", speed.decode_time_split,
         lambda r: dict(model=_model(), prompt=_tokens(r, 1, 4)[0], steps=2),
         dict(model="model", prompt="tokens", steps="count")),
    Spec("speed.triad_bandwidth", speed.triad_bandwidth,
         lambda r: dict(n=1024, repeats=1), dict(n="count", repeats="count", parallel="flag")),
    Spec("speed.matmul_flops", speed.matmul_flops, lambda r: dict(n=16, repeats=1),
         dict(n="count", repeats="count")),
]

# llama.cpp clients: every malformed argument is refused before a tool runs (the valid call
# needs the tools of scripts/llama_cpp.sh and is skipped without them)
@functools.lru_cache(maxsize=1)
def _gguf_model() -> Path:
    return export.to_gguf(_model(), _TMP / "client.gguf", "Q8_0", tokenizer=_TOKENIZER)


TOOL_SPECS = [
    Spec("deploy.llama_perplexity", deploy.llama_perplexity,
         lambda r: dict(gguf_path=_gguf_model(), text=_TEXT, n_ctx=8, threads=1),
         dict(gguf_path="path_in", text="text", n_ctx="count", threads="count")),
    Spec("deploy.llama_generate", deploy.llama_generate,
         lambda r: dict(gguf_path=_gguf_model(), prompt="To be", n_predict=2),
         dict(gguf_path="path_in", prompt="text", n_predict="count")),
    Spec("kvcache.llama_cpp_perplexity", kvcache.llama_cpp_perplexity,
         lambda r: dict(gguf=_gguf_model(), text=_TEXT, k_type="bf16", v_type="f16", n_ctx=8,
                        threads=1),
         dict(gguf="path_in", text="text", k_type="choice", v_type="choice", rotate="flag",
              n_ctx="count", threads="count")),
    Spec("speed.llama_bench", speed.llama_bench,
         lambda r: dict(gguf_file=_gguf_model(), n_gen=2, n_prompt=1, threads=1, repetitions=1),
         dict(gguf_file="path_in", n_gen="count", n_prompt="count", threads="count",
              repetitions="count")),
]
SPECS += TOOL_SPECS

_BAD_TOKENS = {
    "float": lambda v, r: v.float(), "bool": lambda v, r: v > 0,
    "empty": lambda v, r: v[..., :0], "out_of_vocab": lambda v, r: v + 10 ** 6,
    "negative": lambda v, r: v - 10 ** 6, "string": lambda v, r: "to be or not",
    "none": lambda v, r: None, "extra_dim": lambda v, r: v[None, None],
}
MUTATIONS.update({
    "model": {"not_a_module": lambda v, r: "tiny", "none": lambda v, r: None,
              "no_layers": lambda v, r: torch.nn.Sequential(torch.nn.Linear(4, 4))},
    "linear": {"not_a_module": lambda v, r: "linear", "none": lambda v, r: None,
               "no_weight": lambda v, r: torch.nn.ReLU()},
    "tokens": _BAD_TOKENS,
    "tokens2": {**_BAD_TOKENS, "one_dim": lambda v, r: v[0]},
    "tokens1": {**_BAD_TOKENS, "two_dim": lambda v, r: v[None]},
    "tok": {"none": lambda v, r: None, "string": lambda v, r: "gpt2"},
    "text": {"none": lambda v, r: None, "number": lambda v, r: 3, "empty": lambda v, r: ""},
    "text_or_ids": {"none": lambda v, r: None, "number": lambda v, r: 3,
                    "empty": lambda v, r: "", "float_ids": lambda v, r: [0.5, 1.5, 2.5],
                    "out_of_vocab_ids": lambda v, r: [1, 2, 10 ** 6]},
    "fn": {"none": lambda v, r: None, "not_callable": lambda v, r: 3},
    "fn_out": {"none": lambda v, r: None, "not_callable": lambda v, r: 3,
               "nan_out": lambda v, r: (lambda w: w * math.nan),
               "wrong_shape": lambda v, r: (lambda w: w[:1]),
               "string_out": lambda v, r: (lambda w: "w")},
    "names": {"unknown": lambda v, r: ["layers.9.mlp.up_proj"], "number": lambda v, r: 3,
              "empty": lambda v, r: []},
    "path": {"none": lambda v, r: None, "number": lambda v, r: 3, "empty": lambda v, r: ""},
    "path_in": {"none": lambda v, r: None, "number": lambda v, r: 3,
                "missing": lambda v, r: _TMP / "nothing-here.bin",
                "directory": lambda v, r: _TMP},
    "opt_count": {"zero": lambda v, r: 0, "negative": lambda v, r: -3,
                  "fractional": lambda v, r: 2.5, "string": lambda v, r: "8"},
    "opt_count0": {"negative": lambda v, r: -3, "fractional": lambda v, r: 2.5,
                   "string": lambda v, r: "8"},
    "count0": {"negative": lambda v, r: -3, "fractional": lambda v, r: 2.5,
               "string": lambda v, r: "8", "none": lambda v, r: None},
    "opt_size": {"zero": lambda v, r: 0, "negative": lambda v, r: -7,
                 "fractional": lambda v, r: 2.5, "non_divisor": lambda v, r: 7},
    "seed": {"fractional": lambda v, r: 0.5, "string": lambda v, r: "0",
             "negative": lambda v, r: -1},
    "threads": {"zero": lambda v, r: 0, "fractional": lambda v, r: 1.5,
                "string": lambda v, r: "1"},
    "unit_drop": {"negative": lambda v, r: -0.5, "one": lambda v, r: 1.0,
                  "nan": lambda v, r: math.nan, "string": lambda v, r: "0.1",
                  "none": lambda v, r: None},
    "kv_cache": {"not_a_cache": lambda v, r: "cache",
                 "other_model": lambda v, r: LlamaModel(dataclasses.replace(_CFG, n_layers=2))
                 .new_cache()},
    "layers": {"not_a_dict": lambda v, r: "layers", "empty": lambda v, r: {},
               "missing_key": lambda v, r: {"l": {k: t for k, t in v["l"].items()
                                                  if k != "qzeros"}}},
    "cache_fmt": {"wrong_type": lambda v, r: {"type": "int4"}, "none": lambda v, r: None,
                  "name_only": lambda v, r: "int4"},
    "optimizer": {"not_an_optimizer": lambda v, r: "adam"},
    "stored": {"missing_key": lambda v, r: {k: a for k, a in v.items() if k != "scale"},
               "not_a_dict": lambda v, r: "codes", "none": lambda v, r: None,
               "truncated": lambda v, r: {**v, "codes": v["codes"][..., :1]}},
    "imatrix": {"not_a_dict": lambda v, r: np.ones(32), "empty": lambda v, r: {},
                "negative": lambda v, r: {k: -a for k, a in v.items()},
                "nan": lambda v, r: {k: a * math.nan for k, a in v.items()},
                "strings": lambda v, r: {k: "a" for k in v}},
    "imatrix_opt": {"not_a_dict": lambda v, r: np.ones(32),
                    "wrong_length": lambda v, r: {"blk.0.ffn_up.weight": np.ones(7, np.float32)},
                    "negative": lambda v, r: {"blk.0.ffn_up.weight": -np.ones(32, np.float32)}},
    "imatrix_acts": {"not_a_dict": lambda v, r: np.ones(32), "empty": lambda v, r: {},
                     "nan": lambda v, r: {k: a * math.nan for k, a in v.items()},
                     "int": lambda v, r: {k: a.astype(np.int32) for k, a in v.items()},
                     "one_dim": lambda v, r: {k: a[0] for k, a in v.items()}},
    "model_size": {"unknown": lambda v, r: "Llama-99B", "none": lambda v, r: None,
                   "negative": lambda v, r: -7e9, "nan": lambda v, r: math.nan,
                   "bool": lambda v, r: True},
    "model_name": {"unknown": lambda v, r: "gpt-5", "none": lambda v, r: None,
                   "number": lambda v, r: 3, "missing_gguf": lambda v, r: "/nonexistent/m.gguf"},
})


def _raised_by_qlearn(e: BaseException) -> bool:
    """The innermost frame is a ``raise`` statement in qlearn's own code."""
    last = traceback.extract_tb(e.__traceback__)[-1]
    if not last.filename.startswith(QLEARN_DIR):
        return False
    lines = [linecache.getline(last.filename, n).strip() for n in range(last.lineno - 4,
                                                                         last.lineno + 1)]
    return any(ln.startswith("raise ") for ln in lines)


def _corrupt(v):
    """The object with one field made inconsistent."""
    if isinstance(v, calibration.Range):
        return calibration.Range(v.hi + 1, v.lo)               # lo > hi
    if isinstance(v, gptq.GPTQResult):
        return dataclasses.replace(v, bits=3)                  # codes above 2^3 - 1 or wrong shape
    if isinstance(v, nf4.QuantState):
        return dataclasses.replace(v, nested_absmax=None, offset=None)  # codes used as absmax
    if isinstance(v, uniform.QTensor):
        return dataclasses.replace(v, scale=np.concatenate([v.scale, v.scale]))  # extra scales
    if isinstance(v, gguf_mixes.ModelConfig):
        return dataclasses.replace(v, n_heads=0)               # no attention heads
    raise AssertionError(type(v))


CASES = [(s.name, arg, kind, bad) for s in SPECS for arg, kind in s.kinds.items()
         for bad in MUTATIONS[kind]]
SPEC_BY_NAME = {s.name: s for s in SPECS}


# --- the check ---------------------------------------------------------------------------------------

def outcome(spec: Spec, arg: str, kind: str, bad: str, seed: int) -> tuple[str, str]:
    """Call with one malformed argument: ("ValueError"/"TypeError", msg) when qlearn refused it,
    ("opaque", where) for an exception from elsewhere, ("silent", "") when it returned."""
    rng = np.random.default_rng(seed)
    kwargs = spec.build(rng)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            # inside the try: an object that refuses to be corrupted (a dataclass checking its
            # fields) counts as refusing the bad input
            kwargs[arg] = MUTATIONS[kind][bad](kwargs.get(arg), rng)
            spec.fn(**kwargs)
    except (ValueError, TypeError) as e:
        if not _raised_by_qlearn(e):
            last = traceback.extract_tb(e.__traceback__)[-1]
            return "opaque", f"{type(e).__name__} at {last.filename}:{last.lineno}: {e}"
        msg = str(e)
        if "got" not in msg and "expected" not in msg:   # says what came or what was due
            return "vague", msg
        return ("TypeError" if isinstance(e, TypeError) else "ValueError"), msg
    except Exception as e:  # noqa: BLE001 - any other exception is the failure we look for
        frames = traceback.extract_tb(e.__traceback__)
        return "opaque", f"{type(e).__name__} from {frames[-1].filename}: {e}"
    return "silent", ""


@pytest.mark.parametrize("name", [s.name for s in SPECS])
def test_the_valid_call_runs(name):
    """The base call is valid, so every error below comes from the one malformed argument."""
    spec = SPEC_BY_NAME[name]
    if spec in TOOL_SPECS and not llama_cpp.available():
        pytest.skip("needs the llama.cpp tools (bash scripts/llama_cpp.sh)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec.fn(**spec.build(np.random.default_rng(0)))


@pytest.mark.parametrize("name, arg, kind, bad", CASES, ids=["-".join(c[:2] + c[3:]) for c in CASES])
def test_malformed_argument_is_refused_clearly(name, arg, kind, bad):
    """Every (function, argument, malformation) once, on seeded valid data."""
    result, detail = outcome(SPEC_BY_NAME[name], arg, kind, bad, 0)
    assert result in ("ValueError", "TypeError"), f"{name}({arg}={bad}): {result} {detail}"


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=st.sampled_from(CASES), seed=st.integers(0, 2 ** 32 - 1))
def test_malformed_argument_is_refused_on_random_data(case, seed):
    """The same property on data (and NaN positions) hypothesis draws."""
    name, arg, kind, bad = case
    result, detail = outcome(SPEC_BY_NAME[name], arg, kind, bad, seed)
    assert result in ("ValueError", "TypeError"), f"{name}({arg}={bad}): {result} {detail}"


# --- corrupt files and states --------------------------------------------------------------------

def _gguf(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    return gguf_io.write_gguf(tmp_path / "ok.gguf", {
        "a.weight": (_W(rng, 2, 64), "Q8_0"), "b.weight": (_W(rng, 2, 32), "F32"),
        "c.weight": (_W(rng, 2, 256), "Q4_K")}, {"llama.block_count": 1})


def _tensor_type_offset(raw: bytes, name: str) -> int:
    """Byte offset of the ggml type field of tensor ``name`` in the tensor table."""
    key = name.encode()
    at = raw.index(len(key).to_bytes(8, "little") + key) + 8 + len(key)
    n_dims = int.from_bytes(raw[at:at + 4], "little")
    return at + 4 + 8 * n_dims


def _corruptions(path: Path) -> dict[str, bytes]:
    raw = path.read_bytes()
    out = {"empty file": b"", "bad magic": b"GGUX" + raw[4:], "version 99": raw[:4] +
           (99).to_bytes(4, "little") + raw[8:], "truncated data": raw[:-100],
           "truncated header": raw[:40], "garbage tail only": raw[:8] + b"\xff" * 64}
    for name, ggml_t in (("a.weight", 13), ("b.weight", 14), ("a.weight", 999)):
        at = _tensor_type_offset(raw, name)
        out[f"{name} type edited to {ggml_t}"] = raw[:at] + ggml_t.to_bytes(4, "little") + \
            raw[at + 4:]
    at = _tensor_type_offset(raw, "a.weight") - 16   # first dim of a.weight
    out["a.weight dims edited"] = raw[:at] + (4096).to_bytes(8, "little") + raw[at + 8:]
    return out


def test_corrupt_gguf_files_are_refused_with_corrupt_gguf(tmp_path):
    ok = _gguf(tmp_path)
    gguf_io.read_gguf(ok)
    for what, data in _corruptions(ok).items():
        p = tmp_path / "bad.gguf"
        p.write_bytes(data)
        with pytest.raises(ValueError, match="corrupt GGUF") as e:
            gguf_io.read_gguf(p)
        assert traceback.extract_tb(e.value.__traceback__)[-1].filename.startswith(QLEARN_DIR), what


@pytest.mark.parametrize("tensors, match", [
    ({"x" * 64: (np.zeros(4, np.float32), "F32")}, "at most 63 bytes"),
    ({"c": (np.ones(4, np.complex64), "F32")}, "complex"),
    ({"i": (np.array([1, 300], np.int32), "I8")}, "overflow I8"),
    ({"i": (np.array([1.5, 2.0], np.float32), "I16")}, "fractional"),
    ({"h": (np.array([1e6], np.float32), "F16")}, "overflows F16"),
    ({"e": (np.zeros(0, np.float32), "F32")}, "empty"),
])
def test_write_gguf_refuses_what_would_change_or_break_the_file(tmp_path, tensors, match):
    with pytest.raises(ValueError, match=match):
        gguf_io.write_gguf(tmp_path / "w.gguf", tensors, {})



# --- corrupt safetensors -------------------------------------------------------------------------

def _split_safetensors(raw: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join_safetensors(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + data


def _edited(raw: bytes, edit) -> bytes:
    header, data = _split_safetensors(raw)
    edit(header)
    return _join_safetensors(header, data)


def _safetensors_corruptions(raw: bytes) -> dict[str, bytes]:
    header, data = _split_safetensors(raw)
    names = sorted((k for k in header if k != "__metadata__"),
                   key=lambda k: header[k]["data_offsets"][0])
    a, b = names[0], names[1]
    n = int.from_bytes(raw[:8], "little")

    def overlap(h):
        h[b]["data_offsets"] = [h[a]["data_offsets"][0],
                                h[a]["data_offsets"][0] + h[b]["data_offsets"][1]
                                - h[b]["data_offsets"][0]]

    def other_dtype(h):
        h[a]["dtype"] = "F64" if h[a]["dtype"] != "F64" else "F32"

    return {
        "empty file": b"",
        "truncated header length": raw[:5],
        "truncated header": raw[:8 + n // 2],
        "truncated data": raw[:-16],
        "header length past the end": (len(raw) * 2).to_bytes(8, "little") + raw[8:],
        "header length zero": (0).to_bytes(8, "little") + raw[8:],
        "header JSON garbage": raw[:8] + b"{\xff" + b"x" * (n - 2) + raw[8 + n:],
        "header not an object": raw[:8] + b"[1]" + b" " * (n - 3) + raw[8 + n:],
        "offsets outside the data": _edited(raw, lambda h: h[a].update(
            data_offsets=[0, len(data) + 4])),
        "offsets reversed": _edited(raw, lambda h: h[a].update(data_offsets=[8, 4])),
        "tensors overlap": _edited(raw, overlap),
        "dtype does not match the bytes": _edited(raw, other_dtype),
        "shape does not match the bytes": _edited(raw, lambda h: h[a].update(
            shape=[d + 1 for d in h[a]["shape"]])),
        "unknown dtype": _edited(raw, lambda h: h[a].update(dtype="Q4_K")),
        "negative dimension": _edited(raw, lambda h: h[a].update(shape=[-1])),
        "entry without offsets": _edited(raw, lambda h: h[a].pop("data_offsets")),
        "metadata not str": _edited(raw, lambda h: h.update(__metadata__={"bits": 4})),
    }


def _assert_corrupt(fn, path, what):
    with pytest.raises(ValueError, match="corrupt safetensors") as e:
        fn(path)
    assert traceback.extract_tb(e.value.__traceback__)[-1].filename.startswith(QLEARN_DIR), what


def test_corrupt_safetensors_are_refused_by_every_reader(tmp_path):
    """qlearn's two safetensors readers (the tiny model's weights, GPTQ checkpoints) refuse
    each corruption with ValueError("corrupt safetensors: ...") before reading a tensor."""
    from qlearn import checkpoint

    gptq_file = _gptq_file(np.random.default_rng(0))
    readers = {gptq_file: [gptq.load_autogptq, checkpoint.check_safetensors],
               models.TINY_WEIGHTS: [lambda p: models.load_tiny(weights=p)]}
    n_cases = 0
    for good, fns in readers.items():
        for fn in fns:
            fn(good)                                          # the intact file loads
        for what, data in _safetensors_corruptions(good.read_bytes()).items():
            p = tmp_path / f"bad-{good.stem}.safetensors"
            p.write_bytes(data)
            for fn in fns:
                _assert_corrupt(fn, p, f"{good.name}: {what}")
                n_cases += 1
    assert n_cases == 3 * 17


def test_safetensors_missing_tensors_are_named(tmp_path):
    raw = models.TINY_WEIGHTS.read_bytes()
    p = tmp_path / "tiny.safetensors"
    p.write_bytes(_edited(raw, lambda h: h.pop("layers.3.mlp.up_proj.weight")))
    with pytest.raises(ValueError, match=r"corrupt safetensors.*layers\.3\.mlp\.up_proj\.weight"):
        models.load_tiny(weights=p)
    with pytest.raises(ValueError, match="expected a safetensors file, got no file"):
        gptq.load_autogptq(tmp_path / "absent.safetensors")


def test_gptq_checkpoint_consistency(tmp_path):
    rng = np.random.default_rng(0)
    packed = _packed(rng)
    with pytest.raises(ValueError, match="holds 4-bit codes but bits=8"):
        gptq.save_autogptq(tmp_path / "g.safetensors", {"l": packed}, 8, 32, True, False)
    with pytest.raises(ValueError, match="scales_dtype"):
        gptq.pack_autogptq(_gptq_result(rng), scales_dtype=torch.int8)
    gptq.save_autogptq(tmp_path / "g.safetensors", {"l": packed}, 4, 32, True, False)
    gptq.load_autogptq(tmp_path / "g.safetensors")
    raw = (tmp_path / "g.safetensors").read_bytes()
    (tmp_path / "bad.safetensors").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt safetensors"):
        gptq.load_autogptq(tmp_path / "bad.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(raw.replace(b'"bits":"4"', b'"bits":"8"'))
    with pytest.raises(ValueError, match="config says bits=8"):
        gptq.load_autogptq(tmp_path / "bad.safetensors")


def test_nf4_state_missing_nested_absmax_is_refused():
    packed, state = _nf4_state(np.random.default_rng(0))
    d = state.as_dict()
    del d["nested_absmax"]
    with pytest.raises(ValueError, match="nested_absmax is missing"):
        nf4.QuantState.from_dict(d)
    with pytest.raises(ValueError, match="missing nested_absmax"):
        nf4.dequantize_4bit(packed, dataclasses.replace(state, nested_absmax=None, offset=None))


# --- counts for the report -----------------------------------------------------------------------

def _count() -> None:
    tally, by_fn, bad_cases = Counter(), Counter(), []
    for name, arg, kind, bad in CASES:
        result, detail = outcome(SPEC_BY_NAME[name], arg, kind, bad, 0)
        tally[result] += 1
        by_fn[name] += 1
        if result not in ("ValueError", "TypeError"):
            bad_cases.append(f"{name}({arg}={bad}): {result} {detail[:150]}")
    print(f"{len(SPECS)} functions, {len(CASES)} malformed calls: {dict(tally)}")
    print("\n".join(bad_cases))


if __name__ == "__main__":
    os.environ.setdefault("NUMBA_CACHE_DIR", ".cache/numba")
    sys.exit(_count())
