"""Measuring inference speed on a CPU: memory bandwidth, roofline, tokens per second, time split.

The measurements chapter 13 makes and ``benchmarks/bench_inference.py`` prints:

- :func:`triad_bandwidth`: a STREAM-style triad ``a = b + s * c`` over arrays far larger than
  the caches, in GB/s (24 bytes per element counted, as STREAM does).
- :func:`matmul_flops`: float32 GFLOP/s of a large single-threaded ``torch`` matmul (the compute
  roof).
- :func:`tokens_per_second`: prefill and decode tokens/s of a model with a KV cache (greedy).
- :func:`decode_time_split`: where one decode step's time goes (linears, activation
  quantization, attention, norms, the rest), from module hooks.
- :func:`llama_bench`: llama.cpp's own ``llama-bench`` tokens/s on a GGUF file.

Times are CPU time of this process (``time.process_time``) by default: on a shared machine the
wall clock also counts the time other processes hold the core. Single-threaded runs only (CPU
time of several threads adds up). Every figure is a median of repeats; compare formats by
ratios measured in the same run.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch
from numba import njit, prange

from qlearn import _threads, validate

_threads.launch()  # numba's pool now, so that its start does not reset torch's thread count

__all__ = ["triad_bandwidth", "matmul_flops", "tokens_per_second", "decode_time_split",
           "llama_bench", "smollm2_gguf", "TRIAD_BYTES_PER_ELEMENT"]

TRIAD_BYTES_PER_ELEMENT = 24  # read b, read c, write a: 3 float64 (STREAM's count)
TRIAD_ELEMENTS = 1 << 23  # 64 MiB per float64 array, twice the 32 MiB L3 of the book's machine


def _clock(cpu_time: bool):
    return time.process_time if cpu_time else time.perf_counter


def _median_time(fn, repeats: int, cpu_time: bool = True) -> float:
    """Median seconds of fn() over `repeats` calls after one warm-up call."""
    validate.integer(repeats, "repeats", lo=1)
    validate.flag(cpu_time, "cpu_time")
    clock = _clock(cpu_time)
    fn()
    ts = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        ts.append(clock() - t0)
    return float(np.median(ts))


@njit(cache=True)
def _triad_serial(a, b, c, s):
    for i in range(a.shape[0]):
        a[i] = b[i] + s * c[i]


@njit(cache=True, parallel=True)
def _triad_parallel(a, b, c, s):
    for i in prange(a.shape[0]):
        a[i] = b[i] + s * c[i]


def triad_bandwidth(n: int = TRIAD_ELEMENTS, repeats: int = 5, parallel: bool = False) -> float:
    """STREAM triad bandwidth in GB/s: ``a[i] = b[i] + s * c[i]`` over n float64 (median).

    parallel: False is one thread (CPU time); True uses numba's threads (wall time).
    """
    validate.flag(parallel, "parallel")
    if not isinstance(n, (int, np.integer)) or n < 1024:
        raise ValueError(f"n must be an integer >= 1024 (arrays far larger than the caches), got {n!r}")
    a = np.zeros(n)
    b = np.ones(n)
    c = np.full(n, 2.0)
    kernel = _triad_parallel if parallel else _triad_serial
    t = _median_time(lambda: kernel(a, b, c, 3.0), repeats, cpu_time=not parallel)
    return TRIAD_BYTES_PER_ELEMENT * n / t / 1e9


def matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """Single-threaded float32 ``torch`` matmul (n x n) @ (n x n) in GFLOP/s (2 n^3 flops)."""
    if not isinstance(n, (int, np.integer)) or n < 16:
        raise ValueError(f"n must be an integer >= 16, got {n!r}")
    g = torch.Generator().manual_seed(0)
    A = torch.randn(n, n, generator=g)
    B = torch.randn(n, n, generator=g)
    with _threads(1):
        t = _median_time(lambda: A @ B, repeats)
    return 2 * n ** 3 / t / 1e9


class _threads:
    """Context manager: torch's intra-op threads set to k, restored after."""

    def __init__(self, k: int):
        self.k = k

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.k)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


def _check_prompt(model, prompt) -> torch.Tensor:
    validate.module(model)
    if not hasattr(model, "new_cache"):
        raise ValueError(f"expected a model with a KV cache (model.new_cache()), got {type(model).__name__}")
    prompt = validate.tokens(prompt, "prompt", vocab_size=validate.vocab_size(model))
    if prompt.ndim == 1:
        prompt = prompt[None]
    if prompt.ndim != 2 or prompt.shape[0] != 1 or prompt.shape[1] < 1 or prompt.dtype != torch.int64:
        raise ValueError(f"prompt must be (1, seq) or (seq,) int64 token ids, got "
                         f"{prompt.dtype} {tuple(prompt.shape)}")
    return prompt


@torch.no_grad()
def tokens_per_second(model, prompt, new_tokens: int = 16, repeats: int = 3,
                      cpu_time: bool = True) -> dict[str, float]:
    """Prefill and decode speed of ``model`` (KV cache, greedy, batch 1).

    prompt: (seq,) or (1, seq) int64. Each repeat: prefill the prompt into a fresh cache (timed),
    then ``new_tokens`` decode steps of one token each (each timed, argmax included).
    Returns {"prefill": tokens/s (median over repeats), "decode": tokens/s (median step)}.
    """
    prompt = _check_prompt(model, prompt)
    validate.integer(new_tokens, "new_tokens", lo=1)
    validate.integer(repeats, "repeats", lo=1)
    validate.flag(cpu_time, "cpu_time")
    clock = _clock(cpu_time)
    model.eval()
    model(prompt[:, :2], cache=model.new_cache())  # warm-up (kernel compilation, allocations)
    prefill, steps = [], []
    for _ in range(repeats):
        cache = model.new_cache()
        t0 = clock()
        logits = model(prompt, cache=cache)
        prefill.append(clock() - t0)
        tok = logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(new_tokens):
            t0 = clock()
            tok = model(tok, cache=cache)[:, -1].argmax(-1, keepdim=True)
            steps.append(clock() - t0)
    return {"prefill": prompt.shape[1] / float(np.median(prefill)), "decode": 1 / float(np.median(steps))}


SPLIT_PARTS = ("linears", "activation quantization", "attention", "norms", "mlp activation",
               "embedding + sampling + rest")


@torch.no_grad()
def decode_time_split(model, prompt, steps: int = 8) -> dict[str, float]:
    """Seconds (CPU) per decode step spent in each part of the model, from forward hooks.

    Parts (:data:`SPLIT_PARTS`): the linears (the matvecs; for quantized linears without the
    activation quantization), the activation quantization (timed separately on the same inputs),
    attention (rotary, cache, softmax: the attention module minus its linears), the RMS norms,
    the MLP's SiLU-and-product (the MLP minus its linears), and the rest (embedding lookup,
    argmax, Python between modules). Hooks add a few microseconds per module to the total.
    """
    from qlearn import adapters, kernels
    from qlearn.models.quantized import QuantizedLinear

    prompt = _check_prompt(model, prompt)
    validate.integer(steps, "steps", lo=1)
    clock = time.process_time
    acc = defaultdict(float)
    starts = {}
    handles = []

    def timed(module, key):
        def pre(mod, args):
            starts[id(mod)] = clock()

        def post(mod, args, out):
            acc[key] += clock() - starts.pop(id(mod))
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))

    quantizing = []  # (input vector, qtype) of each quantized linear call, to time afterwards

    def record(mod, args):
        if isinstance(mod, QuantizedLinear) and mod.fused and args[0].numel() == mod.in_features:
            quantizing.append((args[0], mod.qtype))

    linears = adapters.find_linears(model, include_lm_head=True)
    for name, lin in linears.items():
        where = "attn linears" if "self_attn" in name else "mlp linears" if ".mlp." in name else "head"
        timed(lin, where)
        handles.append(lin.register_forward_pre_hook(record))
    for layer in adapters.decoder_layers(model):
        timed(layer.self_attn, "attention module")
        timed(layer.mlp, "mlp module")
        timed(layer.input_layernorm, "norms")
        timed(layer.post_attention_layernorm, "norms")
    timed(model.norm, "norms")
    try:
        cache = model.new_cache()
        tok = model(prompt, cache=cache)[:, -1].argmax(-1, keepdim=True)
        tok = model(tok, cache=cache)[:, -1].argmax(-1, keepdim=True)  # warm-up step
        acc.clear()
        quantizing.clear()
        t0 = clock()
        for _ in range(steps):
            tok = model(tok, cache=cache)[:, -1].argmax(-1, keepdim=True)
        total = clock() - t0
    finally:
        for h in handles:
            h.remove()
    # activation quantization: the kernels' quantizer on the same inputs, once per distinct input
    seen = set()
    t0 = clock()
    for x, qtype in quantizing:
        key = (id(x), qtype in kernels._Q8_0_ACTIVATIONS)
        if key in seen:
            continue
        seen.add(key)
        kernels.quantize_activations(x.reshape(-1).contiguous().numpy(), qtype)
    t_quant = clock() - t0
    per = defaultdict(float, {k: v / steps for k, v in acc.items()})
    lin_t = per["attn linears"] + per["mlp linears"] + per["head"]
    split = {
        "linears": lin_t - t_quant / steps,
        "activation quantization": t_quant / steps,
        "attention": per["attention module"] - per["attn linears"],
        "norms": per["norms"],
        "mlp activation": per["mlp module"] - per["mlp linears"],
    }
    split["embedding + sampling + rest"] = total / steps - sum(split.values())
    return split


def llama_bench(gguf_file, n_gen: int = 32, n_prompt: int = 64, threads: int = 1,
                repetitions: int = 3) -> dict[str, float]:
    """llama.cpp's ``llama-bench -n n_gen -p n_prompt -t threads`` on a GGUF file.

    Returns {"prefill": tokens/s (pp test), "decode": tokens/s (tg test)} as llama-bench reports
    them (wall clock, mean over ``repetitions``), and "decode_cpu": decode tokens/s from CPU time,
    comparable with :func:`tokens_per_second` on a loaded machine. It is estimated from two more
    runs, ``-n n_gen`` and ``-n 1`` (no prompt test): the difference of their CPU time (user + sys
    of the child process) is ``repetitions * (n_gen - 1)`` decode steps, so loading the model and
    the warm-up cancel out (approximately: single-threaded runs only).
    Needs the tools from ``scripts/llama_cpp.sh``.
    """
    import json
    import resource

    from qlearn import llama_cpp

    gguf_file = validate.gguf_file(gguf_file, "gguf_file")
    validate.integer(n_gen, "n_gen", lo=2)
    for name, v in (("n_prompt", n_prompt), ("threads", threads), ("repetitions", repetitions)):
        validate.integer(v, name, lo=1)
    common = ("-m", str(gguf_file), "-t", str(threads), "-r", str(repetitions), "-o", "json")
    out = llama_cpp.run("llama-bench", "-n", str(n_gen), "-p", str(n_prompt), *common)
    text = out.stdout
    res = {}
    for row in json.loads(text[text.index("["):]):
        res["decode" if row.get("n_gen", 0) > 0 else "prefill"] = float(row["avg_ts"])

    def child_cpu(n):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        llama_cpp.run("llama-bench", "-n", str(n), "-p", "0", *common)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)

    extra = child_cpu(n_gen) - child_cpu(1)
    res["decode_cpu"] = repetitions * (n_gen - 1) / extra if extra > 0 else float("nan")
    return res


def smollm2_gguf(mix: str = "Q4_K_M"):
    """Path of SmolLM2-135M as a llama.cpp ``mix`` GGUF (made once with ``llama-quantize
    --allow-requantize`` from the wheel's Q4_1 file, cached beside it).

    Requantizing from Q4_1 costs accuracy, not speed: the file has the same tensor types and
    sizes as one quantized from float16, which is what a speed comparison needs.
    """
    from qlearn import gguf_mixes, llama_cpp
    from qlearn.models.smollm2 import gguf_path

    if mix not in gguf_mixes.MIXES:
        raise ValueError(f"mix must be one of {', '.join(gguf_mixes.MIXES)}, got {mix!r}")
    src = gguf_path()
    dst = src.with_name(f"SmolLM2-135M-Instruct.{mix}.requantized.gguf")
    if not dst.exists():
        tmp = dst.with_suffix(".part")
        llama_cpp.run("llama-quantize", "--allow-requantize", str(src), str(tmp), mix)
        tmp.rename(dst)
    return dst
