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
import linecache
import math
import os
import sys
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlearn import (awq, calibration, formats, gguf_io, gguf_mixes, gptq, kernels, kquants,
                    llm_int8, memory, nf4, smoothquant, uniform)
from qlearn.models import llama

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
         lambda r: dict(t=_t(_W(r)), mode="per_token", bits=8),
         dict(t="farr2", mode="choice", bits="bits")),
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
