"""Cross-cutting interview questions: the classics asked about LLM quantization, and system design.

``COMMON`` maps each of the 17 questions most often asked in interviews on this topic (issue #15's
list, here in our words) to the id of the question that answers it. Every number is computed by
qlearn; where an input is an assumption (a memory bandwidth, a spec-sheet figure, an OS reserve)
it is a named constant below and the answer says so.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from qlearn import gguf_mixes, memory, uniform
from qlearn.interview import Quiz, question

CH = "ch15"
L2_70B, L3_8B, L2_7B, L3_70B = (memory.MODELS[n] for n in ("Llama-2-70B", "Llama-3-8B", "Llama-2-7B",
                                                             "Llama-3-70B"))
DESKTOP_GBPS = 80  # ASSUMED memory bandwidth of a dual-channel DDR5 desktop, GB/s
RAM_GIB = 64  # "64 GB of RAM": memory modules are counted in binary units
OS_RESERVE_GIB = 8  # ASSUMED: OS, other programs, llama.cpp compute buffers
LAPTOP_GIB = 16
LAPTOP_RESERVE_GIB = 6  # ASSUMED: OS and apps on a 16 GiB laptop
GPU_GIB = 80  # an 80 GB (binary) data-centre GPU
CARD_GIB = 24  # a 24 GB consumer card
RUNTIME_RESERVE_GIB = 2  # ASSUMED: activations, CUDA context, allocator slack on a 24 GB card
CHOOSE_BATCH = 32  # concurrent sequences in the choose-a-level example
GPU_UTIL = 0.9  # vLLM's default gpu_memory_utilization
H100_TFLOPS = 989  # H100 SXM dense BF16 tensor-core peak, spec sheet (TFLOP/s)
H100_TBPS = 3.35  # H100 SXM HBM3 bandwidth, spec sheet (TB/s)
ADAMW_BYTES = 16  # full fine-tuning, mixed-precision AdamW: bytes per parameter
FP32_LORA_BYTES = 16  # LoRA parameter: fp32 weight + gradient + 2 AdamW moments
CTX_4K, CTX_8K, CTX_128K = 4096, 8192, 128 * 1024
MIXES = ("Q2_K", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M")
EVAL_WINDOWS, EVAL_CTX = 32, 128  # qlearn-tiny evaluation: 32 windows of 128 tokens
EVAL_GROUP = 64  # RTN group size on qlearn-tiny (its hidden size is 256)
EVAL_BITS = (8, 4, 3, 2)


def _gguf_config(m: memory.ModelConfig) -> gguf_mixes.ModelConfig:
    return gguf_mixes.ModelConfig(n_layers=m.layers, dim=m.hidden, ffn_dim=m.intermediate, vocab=m.vocab,
                                  n_heads=m.heads, n_kv_heads=m.kv_heads, tied_embeddings=m.tied)


def _mix_gib(m: memory.ModelConfig, mix: str) -> float:
    return memory.gib(m.n_params * gguf_mixes.mix_bpw(mix, _gguf_config(m)) / 8)


def _w_gib(m: memory.ModelConfig, fmt: str) -> float:
    return memory.gib(memory.weight_memory_bytes(m.n_params, fmt))


# --- measurements on qlearn-tiny (shared by several answers) --------------------------------------

@lru_cache(maxsize=1)
def _tiny_eval() -> dict:
    """Next-token log-probabilities of qlearn-tiny in float and with RTN weights at 8/4/3/2 bits
    (groups of 64), on 32 windows of 128 held-out tokens."""
    from qlearn import awq, models

    torch.manual_seed(0)
    model, tok = models.load("tiny")
    ids = torch.tensor(tok.encode(models.validation_text())[:EVAL_WINDOWS * EVAL_CTX])
    x = ids.view(EVAL_WINDOWS, EVAL_CTX)
    target = x[:, 1:]

    def logp(m):
        with torch.no_grad():
            return torch.log_softmax(m(x)[:, :-1].double(), -1)

    ref = logp(model)
    nll_ref = -ref.gather(-1, target[..., None])[..., 0]
    out = {"n_tok": int(nll_ref.numel()), "ppl_fp": float(nll_ref.mean().exp())}
    for bits in EVAL_BITS:
        lq = logp(awq.rtn_model(model, bits, EVAL_GROUP))
        nll = -lq.gather(-1, target[..., None])[..., 0]
        d = (nll - nll_ref).flatten()
        kl = (ref.exp() * (ref - lq)).sum(-1)
        out[f"ppl{bits}"] = float(nll.mean().exp())
        out[f"kl{bits}"] = float(kl.mean())
        out[f"top{bits}"] = 100 * float((lq.argmax(-1) == ref.argmax(-1)).double().mean())
        out[f"dnll{bits}"] = float(d.mean())
        out[f"se_paired{bits}"] = float(d.std() / np.sqrt(d.numel()))
        out[f"se_unpaired{bits}"] = float((nll.var() / nll.numel() + nll_ref.var() / nll_ref.numel()).sqrt())
    return out


@lru_cache(maxsize=1)
def _tiny_tensors():
    """qlearn-tiny's layer-2 down_proj: its weight and the inputs it sees on held-out text."""
    from qlearn.interview.ch04 import _tiny_down_inputs

    x, W = _tiny_down_inputs()
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(W, np.float32)


# --- 1. what quantization is -----------------------------------------------------------------------

def _what():
    out = {f: _w_gib(L3_8B, f) for f in ("FP32", "FP16", "INT8 (per-channel)", "Q4_K")}
    out = {"fp32": out["FP32"], "fp16": out["FP16"], "int8": out["INT8 (per-channel)"], "q4": out["Q4_K"]}
    for b in (4, 3, 2):
        out[f"s{b}"] = uniform.optimal_clip(b, "gaussian")[1]
    out["n"] = L3_8B.n_params / 1e9
    return out


question(
    id="ch15.what_is_quantization", chapter=CH, difficulty="easy", tags=("basics", "memory", "common"),
    question="What is quantization, why does it matter for deploying LLMs, and what are the main approaches? "
             "Can you go below 4 bits?",
    answer="Storing (and sometimes computing with) numbers on a small grid of levels instead of 16- or 32-bit "
           "floats: a scale maps each block of values to integer codes or to a small float format. It matters "
           "because LLM inference is bounded by memory size and memory bandwidth: Llama-3-8B ({n:.2f} B "
           "parameters) needs {fp32:.1f} GiB in FP32, {fp16:.1f} in FP16, {int8:.1f} in INT8 and {q4:.1f} in "
           "Q4_K, and single-stream decoding time scales with the bytes read per token. Approaches: weight-only "
           "(GPTQ, AWQ, GGUF k-quants, NF4: activations stay 16-bit, saves memory and bandwidth) versus weight "
           "and activation quantization (W8A8 INT8/FP8 with SmoothQuant or LLM.int8(): also uses integer or FP8 "
           "matmul units); post-training (PTQ, minutes, no training) versus quantization-aware training (QAT). "
           "Below 4 bits each bit costs more: the best uniform grid on Gaussian data gives {s4:.1f} dB at 4 "
           "bits, {s3:.1f} at 3 and {s2:.1f} at 2. 3-bit PTQ with error compensation is usable; 2-bit needs "
           "mixes (Q2_K), vector codebooks or QAT.",
    follow_ups=("Why is weight-only 4-bit the default for single-user serving?",
                "What breaks first when you quantize activations to 8 bits?"),
    compute=_what,
    quiz=Quiz(prompt="Weight-only quantization reduces which cost of single-stream decoding the most?",
              kind="choice", options=("FLOPs per token", "bytes of weights read per token",
                                      "KV-cache size", "tokenizer time"), correct=1))


# --- 2. symmetric vs asymmetric ------------------------------------------------------------------------

def _sym_asym():
    x, W = _tiny_tensors()
    out = {}
    for key, data, bits, bs in (("w", W, 4, uniform.block_size_for(W.shape, "per_channel")),
                                ("a", x, 8, x.shape)):
        out[key + "_sym"] = uniform.sqnr_db(data, uniform.fake_quantize(data, bits, True, bs))
        out[key + "_asym"] = uniform.sqnr_db(data, uniform.fake_quantize(data, bits, False, bs))
    out["a_min"], out["a_max"] = float(x.min()), float(x.max())
    return out


question(
    id="ch15.symmetric_vs_asymmetric", chapter=CH, difficulty="easy", tags=("symmetric", "zero-point", "common"),
    question="Symmetric versus asymmetric quantization: what is the difference, and when do you use which?",
    answer="Symmetric: x ~ s q with q in -(2^(b-1) - 1)..2^(b-1) - 1, one scale, 0 maps to code 0. Asymmetric: "
           "x ~ s (q - z) with an integer zero point z, so the grid covers [min, max] exactly. Measured on "
           "qlearn-tiny's layer-2 down_proj: its weights (roughly symmetric) at 4 bits per channel give "
           "{w_sym:.2f} dB symmetric and {w_asym:.2f} dB asymmetric; its input activations (range {a_min:.1f} "
           "to {a_max:.1f}) at 8 bits per tensor give {a_sym:.2f} vs {a_asym:.2f} dB. Asymmetric helps when "
           "the range is lopsided and levels are few; it costs a zero point per block and an extra term in "
           "integer matmuls (sum_k (q_k - z) w_k = sum q w - z sum w), so weights are often symmetric and "
           "post-ReLU or lopsided activations asymmetric.",
    follow_ups=("Why must z be an integer?", "Where does the extra z sum_k w_k term get computed?"),
    compute=_sym_asym, chain="basics-chain", after="ch15.scale_zero_point_math")


# --- 3. per-tensor vs per-channel ---------------------------------------------------------------------

def _granularity():
    _, W = _tiny_tensors()
    out = {}
    for key, bs in (("t", W.shape), ("c", uniform.block_size_for(W.shape, "per_channel")),
                    ("g", uniform.block_size_for(W.shape, "per_group", EVAL_GROUP))):
        for bits in (8, 4):
            out[f"{key}{bits}"] = uniform.sqnr_db(W, uniform.fake_quantize(W, bits, True, bs))
        out[key + "_bpw"] = 4 + 16 * W.size / int(np.prod(bs)) / W.size
    out["rows"], out["cols"] = W.shape
    return out


question(
    id="ch15.per_tensor_vs_per_channel", chapter=CH, difficulty="medium",
    tags=("granularity", "per-channel", "common"),
    question="Per-tensor versus per-channel (and per-group) scales: what is the trade-off?",
    answer="More scales follow the data more closely and cost more storage and kernel complexity. On "
           "qlearn-tiny's layer-2 down_proj weight ({rows} x {cols}), symmetric: per tensor {t8:.2f} dB at 8 "
           "bits and {t4:.2f} dB at 4 bits ({t_bpw:.4f} bpw at 4 bits with an fp16 scale); per output channel "
           "{c8:.2f} / {c4:.2f} dB ({c_bpw:.4f} bpw); per group of 64 {g8:.2f} / {g4:.2f} dB ({g_bpw:.4f} "
           "bpw). At 8 bits per-tensor is often enough; at 4 bits per-group is the norm. Per-output-channel "
           "(and per-token for activations) scales factor out of an integer GEMM; per-input-channel "
           "activation scales do not, and per-group scales need kernels that rescale inside the reduction.",
    follow_ups=("Why do GPU INT4 kernels favour group size 128 and not 32?",),
    compute=_granularity, chain="basics-chain", after="ch15.symmetric_vs_asymmetric")


# --- 4. block-wise quantization and GGUF ------------------------------------------------------------------

@lru_cache(maxsize=1)
def _blocks():
    from qlearn import kquants as K

    W = np.random.default_rng(15).standard_normal((64, 1024)).astype(np.float32)
    W[:, 100] *= 20  # one loud input column
    rel = lambda Wh: float(np.sum((Wh - W).astype(np.float64) ** 2) / np.sum(W.astype(np.float64) ** 2))
    out = {"row4": rel(uniform.fake_quantize(W, 4, True, uniform.block_size_for(W.shape, "per_channel")))}
    for t in ("Q4_0", "Q4_K", "Q8_0"):
        out[t] = rel(K.dequantize(K.quantize(W, t), t))
        out[t + "_bpw"] = K.QTYPES[t].bits_per_weight
    return out


question(
    id="ch15.blockwise_gguf", chapter=CH, difficulty="medium", tags=("gguf", "block-wise", "common"),
    question="How does block-wise quantization work, and why does GGUF use it?",
    answer="The tensor is cut into small fixed blocks along each row (32 weights for Q4_0/Q8_0; for k-quants, "
           "256-weight super-blocks made of sub-blocks of 16 or 32); each block stores its own scale (and min) right next to its "
           "codes. An outlier then spoils only its block: on a Gaussian matrix with one column x20, 4-bit with "
           "one scale per row gives relative error {row4:.4f}, Q4_0 {Q4_0:.4f} ({Q4_0_bpw} bpw), Q4_K {Q4_K:.4f} "
           "({Q4_K_bpw} bpw); Q8_0 {Q8_0:.6f}. GGUF is built for llama.cpp's CPU/Metal kernels: a block is "
           "self-contained and SIMD-sized, so a row is decoded and dotted in one streaming pass with 8-bit "
           "activations; the file is memory-mapped and needs no calibration, and mixes give a type per tensor.",
    follow_ups=("What do k-quants' super-blocks add over 32-weight blocks?",),
    compute=_blocks)


# --- 5. GPTQ vs rounding ------------------------------------------------------------------------------------

def _gptq():
    from qlearn.interview.ch06 import _act_order, _overfit

    a, o = _act_order(), _overfit()
    return {"rtn": a["rtn"], "gptq": a["plain"], "act": a["act"], "t_gptq": o["t1024"], "t_rtn": o["rtn"]}


question(
    id="ch15.gptq_vs_rounding", chapter=CH, difficulty="medium", tags=("gptq", "rtn", "common"),
    question="What is GPTQ, and how does it differ from plain round-to-nearest?",
    answer="RTN rounds each weight to its nearest grid point independently. GPTQ quantizes a layer's columns one "
           "at a time and, after each, updates the not-yet-quantized columns to cancel the output error just "
           "made, using the inverse of H = 2 X^T X from calibration inputs (Optimal Brain Surgeon's update, "
           "made fast with a Cholesky factor and lazy batches). Same storage format and kernels as RTN; only "
           "the codes differ. On the chapter-6 layer at 4-bit g128, calibration-set output error: RTN {rtn:.5f}, "
           "GPTQ {gptq:.5f}, with act-order {act:.5f}. Held out, on that synthetic layer whose inputs are "
           "independent: GPTQ {t_gptq:.5f} vs RTN {t_rtn:.5f}, a reminder that the gain comes from real "
           "correlations between input channels and must be checked on held-out data.",
    follow_ups=("What does act-order change?", "Why does GPTQ need damping?"),
    compute=_gptq)


# --- 6. 70B on 64 GB of RAM ---------------------------------------------------------------------------------

def _seventy():
    kv = memory.gib(L2_70B.kv_cache_bytes(CTX_4K))
    budget = RAM_GIB - OS_RESERVE_GIB
    out = {"kv": kv, "budget": budget, "ram": RAM_GIB, "res": OS_RESERVE_GIB, "bw": DESKTOP_GBPS}
    fits = []
    for mix in MIXES:
        g = _mix_gib(L2_70B, mix)
        out[mix] = g
        if g + kv <= budget:
            fits.append(mix)
    for f in ("Q6_K", "Q8_0", "FP16"):
        out[f] = _w_gib(L2_70B, f)
    out["fits"] = ", ".join(fits)
    out["tps"] = DESKTOP_GBPS * memory.BYTES_PER_GB / (out["Q4_K_M"] * memory.BYTES_PER_GIB)
    return out


question(
    id="ch15.llama70b_64gb_ram", chapter=CH, difficulty="hard", tags=("deployment", "memory", "gguf", "common"),
    question="You must run a 70B model on a machine with 64 GB of RAM and no GPU. Which quantization do you "
             "pick, and why?",
    answer="Budget: 64 GB of RAM is {ram} GiB; keep about {res} GiB for the OS and compute buffers (an "
           "assumption) and the fp16 KV cache of a 4K context ({kv:.2f} GiB for Llama-2-70B, 8 KV heads). "
           "Weights of the llama.cpp mixes: Q2_K {Q2_K:.1f} GiB, Q3_K_M {Q3_K_M:.1f}, Q4_K_S {Q4_K_S:.1f}, "
           "Q4_K_M {Q4_K_M:.1f}, Q5_K_M {Q5_K_M:.1f}; Q6_K {Q6_K:.1f}, Q8_0 {Q8_0:.1f}, FP16 {FP16:.1f}. "
           "Fitting in {budget} GiB: {fits}. Pick Q4_K_M: a widely used mix with headroom, commonly "
           "reported as the knee of the quality curve; Q5_K_M only if the context stays short. On CPU, decoding is "
           "memory-bound: at an assumed {bw} GB/s, Q4_K_M reads {Q4_K_M:.1f} GiB per token, at most {tps:.1f} "
           "tokens/s, so a smaller quant is also faster. Use GGUF with llama.cpp (mmap, an imatrix-quantized "
           "file), and check the perplexity or KL divergence against a higher-precision reference.",
    follow_ups=("What changes with 32K tokens of context?", "Would you rather run a 34B model at Q6_K?"),
    compute=_seventy, chain="70b-on-a-box",
    quiz=Quiz(prompt="Llama-2-70B, Q4_K_M mix: weight memory in GiB?", value="Q4_K_M", rel_tol=0.03,
              unit="GiB"))


def _seventy_ctx():
    d = _seventy()
    left = (d["budget"] - d["Q4_K_M"]) * memory.BYTES_PER_GIB
    per16, per8 = L2_70B.kv_cache_bytes(1), L2_70B.kv_cache_bytes(1, bytes_per_element=1)
    return {"q4": d["Q4_K_M"], "left": left / memory.BYTES_PER_GIB, "ctx16": int(left // per16),
            "ctx8": int(left // per8), "kib": per16 / 1024, "wrong": int(left // (per16 * L2_70B.heads
                                                                                   / L2_70B.kv_heads))}


question(
    id="ch15.llama70b_context", chapter=CH, difficulty="hard", tags=("kv-cache", "deployment", "gqa"),
    question="Following on: with Q4_K_M weights in that machine, how long a context can you serve?",
    answer="After the {q4:.1f} GiB of weights and the reserve, {left:.1f} GiB remain. Llama-2-70B's KV cache "
           "costs {kib:.0f} KiB per token in fp16 (80 layers x 2 x 8 KV heads x 128 x 2 bytes), so about "
           "{ctx16} tokens fit, {ctx8} with an 8-bit cache (llama.cpp -ctk q8_0 -ctv q8_0). An answer that "
           "uses the 64 query heads instead of the 8 KV heads gets {wrong} tokens: 8x too pessimistic. The "
           "model was trained for 4096 tokens anyway; beyond that you need RoPE scaling, not just memory.",
    follow_ups=("What is the cost of quantizing V in llama.cpp (why does it need flash attention)?",),
    compute=_seventy_ctx, chain="70b-on-a-box", after="ch15.llama70b_64gb_ram")


# --- 7. measuring quality ----------------------------------------------------------------------------------------

question(
    id="ch15.measure_quality", chapter=CH, difficulty="medium", tags=("evaluation", "perplexity", "common"),
    question="How would you measure the quality impact of quantization?",
    answer="Compare the quantized model with the original on the same inputs, from cheap to expensive: "
           "perplexity on held-out text; the KL divergence of the next-token distributions and top-1 agreement "
           "(more sensitive than perplexity, and what llama.cpp's --kl-divergence reports); task benchmarks "
           "(MMLU, GSM8K, code) and long-context tests; finally human or LLM-judge comparisons on your own "
           "traffic. On qlearn-tiny ({n_tok} held-out tokens, RTN groups of 64): perplexity {ppl_fp:.3f} in "
           "float, {ppl8:.3f} at 8 bits, {ppl4:.3f} at 4, {ppl3:.3f} at 3, {ppl2:.2f} at 2; mean KL {kl8:.2e}, "
           "{kl4:.2e}, {kl3:.2e}, {kl2:.2e} nats; top-1 agreement {top8:.1f} %, {top4:.1f} %, {top3:.1f} %, "
           "{top2:.1f} %. Report differences with their uncertainty, measured per token and paired.",
    follow_ups=("Why can perplexity stay flat while a benchmark drops?",
                "Why compare against the unquantized model's outputs rather than against labels?"),
    quiz=Quiz(prompt="Which comparison with the unquantized model is the most sensitive to small quantization damage?", kind="choice", options=("perplexity", "per-token KL divergence of the next-token distributions", "accuracy on one benchmark", "weight SQNR"), correct=1),
    compute=_tiny_eval, chain="quality-eval")


question(
    id="ch15.eval_statistics", chapter=CH, difficulty="hard", tags=("evaluation", "statistics", "perplexity"),
    question="Following on: quantized and float perplexities differ slightly. How do you know the difference "
             "is real?",
    answer="Pair the tokens. The per-token NLL varies hugely from token to token, but the difference between "
           "the two models on the same token varies far less. On qlearn-tiny at 4 bits the mean NLL difference "
           "is {dnll4:+.4f} nats with a paired standard error of {se_paired4:.4f}; treating the two runs as "
           "independent samples gives a standard error of {se_unpaired4:.4f}, which would hide the effect. At 8 "
           "bits: {dnll8:+.5f} +- {se_paired8:.5f} (paired). Also fix everything else: the same text, "
           "tokenizer, context length and scoring window for both runs.",
    follow_ups=("How many tokens do you need to resolve a 0.1 % perplexity change?", "Why is KL divergence less noisy than perplexity differences?"),
    compute=_tiny_eval, chain="quality-eval", after="ch15.measure_quality")


# --- 8. QAT vs PTQ --------------------------------------------------------------------------------------------

def _qat():
    from qlearn.interview.ch05 import _bits_sweep

    b = _bits_sweep()
    return {"e4": b["b4"], "e3": b["b3"], "e2": b["b2"], "train": memory.gib(L3_8B.n_params * ADAMW_BYTES),
            "infer": _w_gib(L3_8B, "FP16")}


question(
    id="ch15.qat_vs_ptq", chapter=CH, difficulty="medium", tags=("qat", "ptq", "common"),
    question="When would you use quantization-aware training instead of post-training quantization? What are "
             "the trade-offs?",
    answer="PTQ quantizes a trained model with little or no data in minutes to hours; QAT fine-tunes with the "
           "quantizer in the forward pass (fake quantization, straight-through gradients) so the weights adapt "
           "to the grid. Use PTQ when it is good enough, which for weight-only 4 to 8 bits on large models it "
           "usually is. Use QAT when PTQ's loss is too large: below 4 bits, 4-bit activations, small models, "
           "or edge accelerators with fixed integer formats. Relative output error of RTN on the chapter-5 "
           "layer: {e4:.3f} at 4 bits, {e3:.3f} at 3, {e2:.3f} at 2: the cliff QAT is for. The cost is "
           "training: full QAT of Llama-3-8B with AdamW holds about {train:.0f} GiB of weights, gradients and "
           "optimizer state before activations ({infer:.1f} GiB to serve it in FP16), plus data and a training "
           "pipeline; LoRA-style QAT and distillation from the float model reduce it.",
    follow_ups=("What is the straight-through estimator, and where does it break?",
                "Why does QAT often need a teacher (distillation) to recover quality?"),
    compute=_qat)


# --- 9. speed: why not 8x ---------------------------------------------------------------------------------------

def _speed():
    mix = gguf_mixes.mix_bpw("Q4_K_M", _gguf_config(L3_8B))
    w32 = memory.weight_memory_bytes(L3_8B.n_params, "FP32")
    wq = L3_8B.n_params * mix / 8
    kv = L3_8B.kv_cache_bytes(CTX_8K)
    return {"bpw": mix, "ideal": 32 / 4, "bytes_ratio": 32 / mix,
            "with_kv": (w32 + kv) / (wq + kv), "kv_gib": memory.gib(kv), "w_gib": memory.gib(wq)}


question(
    id="ch15.speed_not_8x", chapter=CH, difficulty="hard", tags=("speed", "memory-bandwidth", "common"),
    question="How does quantization affect inference speed? Why does 4-bit not run 8x faster than FP32?",
    answer="Decoding one sequence is memory-bound: time per token ~ bytes read / bandwidth. 32/4 = {ideal:.0f}x "
           "is the ratio of code bits only. A real 4-bit file carries scales and keeps some tensors larger: "
           "Llama-3-8B Q4_K_M averages {bpw:.2f} bpw, so at most {bytes_ratio:.2f}x fewer weight bytes. The KV "
           "cache is read every token too and is not smaller: at 8K tokens it is {kv_gib:.2f} GiB in fp16 "
           "against {w_gib:.2f} GiB of weights, which caps the gain at {with_kv:.2f}x. Then the kernel must "
           "unpack and dequantize (or quantize activations to 8 bits) in registers, which costs compute that "
           "FP32 does not pay; attention, norms and sampling are unchanged. Prefill and large batches are "
           "compute-bound, where 4-bit weight-only kernels gain nothing or lose unless the hardware has "
           "low-precision matmul units.",
    follow_ups=("Which would speed up prefill: W4A16 or W8A8?", "How would you measure the memory bandwidth a "
                                                                 "kernel actually achieves?"),
    compute=_speed,
    quiz=Quiz(prompt="Llama-3-8B Q4_K_M: average bits per weight?", value="bpw", rel_tol=0.02, unit="bpw"))


def _roofline():
    balance = H100_TFLOPS * 1e12 / (H100_TBPS * 1e12)
    bpw4 = memory.bits_per_weight("INT4-g128 (4-bit zero)")
    return {"balance": balance, "b16": balance * 16 / 16, "b4": balance * bpw4 / 16, "bpw4": bpw4,
            "tf": H100_TFLOPS, "tb": H100_TBPS}


question(
    id="ch15.batching_roofline", chapter=CH, difficulty="hard", tags=("speed", "roofline", "serving"),
    question="A 4-bit weight-only model decodes 3x faster than fp16 at batch 1. Will it still be faster at "
             "batch 256?",
    answer="Probably not. Per weight and per decode step, a batch of b tokens does 2b FLOPs and reads the "
           "weight once: bits/8 bytes. Arithmetic intensity = 16 b / bits FLOP per byte. An H100 SXM's balance "
           "point (spec sheet: {tf} TFLOP/s BF16, {tb} TB/s) is {balance:.0f} FLOP/byte. FP16 weights reach it "
           "at b ~ {b16:.0f}; 4-bit g128 weights ({bpw4:.3f} bpw) already at b ~ {b4:.0f}. Beyond that both "
           "are compute-bound, the 4-bit kernel still has to dequantize, and W4A16 gains nothing. For "
           "high-throughput serving choose W8A8 (INT8 or FP8), whose INT8/FP8 tensor cores have about twice the BF16 peak; keep "
           "4-bit weights for latency-bound and memory-bound deployments.",
    follow_ups=("Where does the KV cache enter this picture?", "What does speculative decoding do to this arithmetic?"),
    quiz=Quiz(prompt="Batch size above which 4-bit g128 weight-only decoding is compute-bound on an H100 (spec-sheet balance)?", value="b4", rel_tol=0.05, unit="tokens"),
    compute=_roofline)


# --- 10. multi-tenant design ----------------------------------------------------------------------------------

def _tenants():
    out = {"gpu": GPU_GIB}
    for key, fmt, kvb in (("f16", "FP16", 2), ("int8", "INT8 (per-channel)", 2), ("int4", "INT4-g128 (4-bit zero)", 2),
                          ("int4kv8", "INT4-g128 (4-bit zero)", 1)):
        out[key + "_w"] = _w_gib(L3_8B, fmt)
        out[key] = memory.max_context_that_fits(L3_8B, fmt, GPU_GIB * GPU_UTIL, kv_bytes_per_element=kvb) // CTX_8K
    out["util"] = GPU_UTIL
    return out


question(
    id="ch15.multi_tenant_design", chapter=CH, difficulty="hard", tags=("system-design", "serving", "common"),
    question="Design a quantization strategy for a multi-tenant serving system whose tenants have different "
             "quality requirements.",
    answer="Start from tiers defined by measured quality, not by bit widths: for each tenant, an evaluation set "
           "and a budget (e.g. max KL or benchmark drop against the full-precision model). Serve a few variants "
           "of each base model, each validated against those sets: FP16/BF16 (or FP8) for the strictest tier, "
           "INT8/W8A8 for most, 4-bit weight-only for cost-sensitive or long-context tiers; tenant fine-tunes as "
           "LoRA adapters on a shared quantized base (one copy of the weights, adapters batched per request). "
           "Capacity per 80 GiB GPU for Llama-3-8B at {util} memory utilisation, in concurrent 8K-token "
           "sequences: FP16 weights ({f16_w:.1f} GiB) {f16}; INT8 ({int8_w:.1f} GiB) {int8}; INT4 g128 "
           "({int4_w:.1f} GiB) {int4}; INT4 with an 8-bit KV cache {int4kv8}: at this size the KV cache, not "
           "the weights, decides capacity. Route requests by tier to separate pools (one batch cannot mix "
           "weight formats), autoscale pools independently, canary every new quantized artifact on "
           "shadow traffic, and monitor per-tier quality (sampled KL or LLM-judge against the reference) "
           "alongside latency and cost.",
    follow_ups=("How would you let a tenant move between tiers without downtime?",
                "What would you log to detect a quality regression caused by quantization?"),
    compute=_tenants)


# --- 11. GPTQ vs AWQ vs GGUF ------------------------------------------------------------------------------------

def _methods():
    from qlearn.interview.ch07 import _held_out

    h = _held_out()
    return {"gptq_bpw": memory.bits_per_weight("INT4-g128 (symmetric)"),
            "awq_bpw": memory.bits_per_weight("INT4-g128 (4-bit zero)"),
            "gguf_bpw": gguf_mixes.mix_bpw("Q4_K_M", _gguf_config(L3_8B)),
            "g_cal": h["gptq_cal"], "g_test": h["gptq_test"], "a_cal": h["awq_cal"], "a_test": h["awq_test"]}


question(
    id="ch15.gptq_awq_gguf", chapter=CH, difficulty="medium", tags=("gptq", "awq", "gguf", "common"),
    question="GPTQ, AWQ, GGUF: what is each, and when would you use which?",
    answer="GPTQ and AWQ are algorithms that choose 4-bit codes for GPU checkpoints in the same kind of layout "
           "(4-bit codes, fp16 scale per group of 128: {gptq_bpw:.3f} bpw symmetric, {awq_bpw:.3f} with a 4-bit "
           "zero). GPTQ compensates rounding errors with second-order information from calibration data; AWQ "
           "rescales salient input channels using only activation magnitudes, so it needs less data and "
           "overfits less (on the chapter-7 layer, calibration vs held-out error: GPTQ {g_cal:.4f} vs "
           "{g_test:.4f}, AWQ {a_cal:.4f} vs {a_test:.4f}). Both are served by vLLM/TGI/TensorRT-LLM with fast "
           "INT4 kernels. GGUF is a file format (llama.cpp) with its own block types and per-tensor mixes "
           "(Q4_K_M averages {gguf_bpw:.2f} bpw on Llama-3-8B), for CPUs, Apple silicon, and partial GPU "
           "offload. Choose by the serving stack first, then compare the candidates on your own evaluation.",
    follow_ups=("Can a GGUF file be made with GPTQ- or AWQ-style information?", "Which would you choose for a model served on both GPUs and laptops?"),
    quiz=Quiz(prompt="Which of the three is a file format rather than a quantization algorithm?", kind="choice", options=("GPTQ", "AWQ", "GGUF"), correct=2),
    compute=_methods)


# --- 12. degradation with bits and size ------------------------------------------------------------------------

def _degrade():
    t = _tiny_eval()
    return {"ppl_fp": t["ppl_fp"], "p8": t["ppl8"], "p4": t["ppl4"], "p3": t["ppl3"], "p2": t["ppl2"],
            "k8": t["kl8"], "k4": t["kl4"], "k3": t["kl3"], "k2": t["kl2"], "r84": (t["kl4"] / t["kl8"]) ** 0.25,
            "r43": t["kl3"] / t["kl4"], "r32": t["kl2"] / t["kl3"], "top2": t["top2"],
            "m13": _w_gib(memory.MODELS["Llama-2-13B"], "Q4_K"), "m7": _w_gib(L2_7B, "Q8_0")}


question(
    id="ch15.degradation_bits_size", chapter=CH, difficulty="hard", tags=("quality", "scaling", "common"),
    question="How does quality degrade as you lower the bit width, and how does model size change that?",
    answer="Geometrically in the noise, and late in the headline metric. Each bit removed multiplies the "
           "rounding noise power by about 4. On qlearn-tiny (RTN, groups of 64) the mean KL divergence from the "
           "float model is {k8:.1e} at 8 bits, {k4:.1e} at 4, {k3:.1e} at 3, {k2:.1e} at 2: x{r84:.1f} per bit "
           "from 8 to 4, then x{r43:.1f} and x{r32:.1f}; top-1 agreement falls to {top2:.1f} % at 2 bits. Its "
           "perplexity hardly moves ({ppl_fp:.2f} float, {p8:.2f}, {p4:.2f}, {p3:.2f}, {p2:.2f}): a small, "
           "briefly trained model with high perplexity is unusually robust, and perplexity hides damage that "
           "KL shows. On model size we cannot measure here: published "
           "results (k-quant tables in llama.cpp, Dettmers and Zettlemoyer's bit-level scaling study) report "
           "that larger models lose less at the same bit width, and that at a fixed memory budget a larger "
           "model at about 4 bits beats a smaller one at 8 or 16. E.g. Llama-2-13B in Q4_K takes {m13:.1f} GiB, "
           "Llama-2-7B in Q8_0 {m7:.1f} GiB. Models trained on very many tokens per parameter are reported to be "
           "more sensitive: a hypothesis to test on your model, not a law.",
    follow_ups=("Why do outlier features make large models harder for W8A8 but not for weight-only?",),
    compute=_degrade)


# --- 13. QLoRA and NF4 -------------------------------------------------------------------------------------------

def _qlora():
    from qlearn.interview.ch09 import _gauss_errors

    e = _gauss_errors()
    d, f, n_layers = L3_8B.hidden, L3_8B.intermediate, L3_8B.layers
    kv = L3_8B.kv_heads * L3_8B.head_dim
    r = 16
    lora = n_layers * r * ((d + d) * 2 + (d + kv) * 2 + 3 * (d + f))
    return {"base": _w_gib(L3_8B, "NF4 + double quant"), "bpw": memory.bits_per_weight("NF4 + double quant"),
            "lora_m": lora / 1e6, "lora_gib": memory.gib(lora * FP32_LORA_BYTES), "r": r,
            "full": memory.gib(L3_8B.n_params * ADAMW_BYTES), "nf4": e["nf4"], "asym": e["asym"]}


question(
    id="ch15.qlora_nf4", chapter=CH, difficulty="medium", tags=("qlora", "nf4", "lora", "common"),
    question="Explain QLoRA and how NF4 works.",
    answer="QLoRA fine-tunes a frozen base model stored in 4-bit NF4 by training small LoRA adapters (W x + B A x) "
           "in 16/32-bit. NF4 stores each block of 64 weights as 4-bit indices into 16 levels placed at "
           "quantiles of a normal distribution (exact zero included), scaled by the block's absmax; double "
           "quantization stores those absmax values in 8 bits, for {bpw:.3f} bits per weight. In the forward "
           "pass each layer's weights are dequantized to bf16 on the fly; gradients flow through them to the "
           "adapters only. For Llama-3-8B: base {base:.2f} GiB; rank-{r} adapters on all linears {lora_m:.1f} M "
           "parameters, {lora_gib:.2f} GiB with fp32 gradients and AdamW states; full fine-tuning would hold "
           "about {full:.0f} GiB. NF4 is good but not optimal: on Gaussian blocks of 64 its relative MSE is "
           "{nf4:.4f}, while an asymmetric INT4 grid with an fp16 scale and min per block, same 4.5 bits before "
           "double quantization, gets {asym:.4f}.",
    follow_ups=("What are paged optimizers for?", "Can you merge the adapters into the NF4 weights afterwards?"),
    compute=_qlora)


# --- 14. choosing the level ---------------------------------------------------------------------------------------

def _choose():
    fmts = ("FP16", "Q8_0", "Q6_K", "Q4_K", "INT4-g128 (symmetric)")
    batch = CHOOSE_BATCH
    ok = [f for f in fmts if memory.fits_on_gpu(L3_8B, f, CARD_GIB, context=CTX_4K, batch=batch,
                                                 reserve_gib=RUNTIME_RESERVE_GIB)]
    ok8 = [f for f in fmts if memory.fits_on_gpu(L3_8B, f, CARD_GIB, context=CTX_4K, batch=batch,
                                                  kv_bytes_per_element=1, reserve_gib=RUNTIME_RESERVE_GIB)]
    return {"ok": ", ".join(ok), "ok8": ", ".join(ok8), "card": CARD_GIB, "batch": batch, "res": RUNTIME_RESERVE_GIB,
            "kv": memory.gib(L3_8B.kv_cache_bytes(CTX_4K, batch))}


question(
    id="ch15.choose_level", chapter=CH, difficulty="hard", tags=("deployment", "decision", "common"),
    question="How do you choose the quantization level for a production model?",
    answer="Work back from constraints to candidates to measurements. (1) Constraints: target hardware and "
           "serving stack (which kernels exist), latency and throughput targets, context length and "
           "concurrency, quality budget on your evaluation set. (2) Memory arithmetic prunes the candidates: "
           "Llama-3-8B serving {batch} concurrent 4K-token sequences on a {card} GiB card needs {kv:.1f} GiB of "
           "fp16 KV cache; with an assumed {res} GiB for activations and the runtime, the weight formats "
           "that fit are {ok}; with an 8-bit KV cache: {ok8}. (3) Measure each survivor: "
           "KL divergence / perplexity against the full model, your task metrics, and latency/throughput under "
           "realistic load. (4) Pick the smallest format within the quality budget, preferring mixed precision "
           "(keep embeddings, lm_head and sensitive layers higher) to a lower uniform bit width; re-check with "
           "every model or data update.",
    follow_ups=("How would you find the sensitive layers?", "What would you re-measure when the serving hardware changes?"),
    compute=_choose)


# --- 15. the math -------------------------------------------------------------------------------------------------

def _math():
    x = np.array([-0.3, 0.0, 0.5, 1.2], np.float32)
    q = uniform.quantize(x, 8, symmetric=False, block_size=x.shape)
    xh = uniform.dequantize(q)
    lo, hi = uniform.code_range(8, False)
    return {"s": float(q.scale.ravel()[0]), "z": int(q.zero_point.ravel()[0]), "codes": q.codes.tolist(),
            "xh": ", ".join(f"{v:.5f}" for v in xh), "err": float(np.abs(xh - x).max()), "lo": lo, "hi": hi,
            "half": float(q.scale.ravel()[0]) / 2}


question(
    id="ch15.scale_zero_point_math", chapter=CH, difficulty="easy", tags=("math", "zero-point", "common"),
    question="Walk through the math: scale, zero point, and group quantization.",
    answer="For b-bit asymmetric codes q in {lo}..{hi}: scale s = (max - min) / (2^b - 1), zero point "
           "z = round(-min / s) (clamped), q = clamp(round(x / s) + z), x_hat = s (q - z). For x = [-0.3, 0, 0.5, "
           "1.2] at 8 bits: s = {s:.6f}, z = {z}, codes {codes}, dequantized [{xh}], largest error {err:.5f} "
           "(at most s/2 = {half:.5f} inside the range). Symmetric: z = 0, s = max|x| / (2^(b-1) - 1). Group "
           "quantization computes one (s, z) per group of g consecutive weights of a row, so storage is b + "
           "(bits of s + bits of z) / g bits per weight.",
    follow_ups=("Why can 0 never be off the grid here?", "How do you quantize the scales themselves (k-quants, "
                                                          "double quantization)?"),
    compute=_math, chain="basics-chain",
    quiz=Quiz(prompt="x = [-0.3, 0, 0.5, 1.2], 8-bit asymmetric, one scale: the zero point z?", value="z",
              rel_tol=0.001))


# --- 16. KV cache ------------------------------------------------------------------------------------------------------

def _kv():
    out = {}
    for key, m in (("l3", L3_8B), ("l70", L3_70B)):
        out[key + "_16"] = memory.gib(m.kv_cache_bytes(CTX_128K))
        out[key + "_8"] = memory.gib(m.kv_cache_bytes(CTX_128K, bytes_per_element=1))
        out[key + "_4"] = memory.gib(m.kv_cache_bytes(CTX_128K, bytes_per_element=0.5))
        out[key + "_w"] = _w_gib(m, "FP16")
    out["wrong70"] = memory.gib(memory.kv_cache_bytes(L3_70B.layers, L3_70B.heads, L3_70B.head_dim, CTX_128K))
    return out


question(
    id="ch15.kv_cache_long_context", chapter=CH, difficulty="medium", tags=("kv-cache", "long-context", "common"),
    question="What is KV-cache quantization, and why does it matter at long context?",
    answer="Every generated or prompt token leaves a key and a value vector per layer and KV head; they are read "
           "again for every later token. The cache grows linearly with context and batch while the weights stay "
           "fixed. At 128K tokens, batch 1: Llama-3-8B needs {l3_16:.1f} GiB in fp16 (weights {l3_w:.1f} GiB), "
           "{l3_8:.1f} in 8 bits, {l3_4:.1f} in 4 bits; Llama-3-70B {l70_16:.1f} GiB fp16 (with its 8 KV heads; "
           "counting its 64 query heads would give {wrong70:.0f} GiB), {l70_8:.1f} / {l70_4:.1f} GiB at 8 / 4 "
           "bits. Quantizing the cache (FP8 or INT8 per head/token; INT4 with per-channel keys as in KIVI) "
           "raises the batch or context that fits and cuts the bytes read per token. Keys have a few outlier "
           "channels (reported by KIVI and KVQuant), so keys are usually quantized per channel and values per token.",
    follow_ups=("Why are keys harder to quantize than values?",
                "How does paged attention interact with a quantized cache?"),
    compute=_kv,
    quiz=Quiz(prompt="Llama-3-8B, 128K tokens, fp16 KV cache, batch 1: GiB?", value="l3_16", rel_tol=0.02,
              unit="GiB"))


def _per_token():
    out = {}
    for key, name in (("l27", "Llama-2-7B"), ("l38", "Llama-3-8B"), ("l270", "Llama-2-70B"), ("m7", "Mistral-7B")):
        m = memory.MODELS[name]
        out[key] = m.kv_cache_bytes(1) / 1024
        out[key + "_h"] = m.kv_heads
    return out


question(
    id="ch15.gqa_per_token", chapter=CH, difficulty="easy", tags=("kv-cache", "gqa", "memory"),
    question="How many bytes of KV cache does one token cost, and why is it so different between models of "
             "similar size?",
    answer="2 (K and V) x layers x KV heads x head_dim x bytes. In fp16: Llama-2-7B {l27:.0f} KiB per token "
           "({l27_h} KV heads, multi-head attention), Llama-3-8B {l38:.0f} KiB ({l38_h} KV heads, grouped-query "
           "attention), Mistral-7B {m7:.0f} KiB ({m7_h}), Llama-2-70B {l270:.0f} KiB ({l270_h}). GQA shares each "
           "K/V head among several query heads: a 4x or 8x smaller cache before any quantization.",
    follow_ups=("What does multi-query attention (1 KV head) cost in quality?",),
    compute=_per_token,
    quiz=Quiz(prompt="KiB of fp16 KV cache per token for Llama-2-70B?", value="l270", rel_tol=0.01, unit="KiB"))


# --- 17. the production stack -----------------------------------------------------------------------------------

def _stack():
    fmt = "INT4-g128 (4-bit zero)"
    out = {"card": CARD_GIB, "util": GPU_UTIL, "w": _w_gib(L3_8B, fmt)}
    for key, kvb in (("t16", 2), ("t8", 1)):
        out[key] = memory.max_context_that_fits(L3_8B, fmt, CARD_GIB * GPU_UTIL, kv_bytes_per_element=kvb)
        out[key + "_seq"] = out[key] // CTX_4K
    return out


question(
    id="ch15.production_stack", chapter=CH, difficulty="hard", tags=("system-design", "deployment", "common"),
    question="Deploy a quantized model to production: walk through the full stack, from serving framework and "
             "configuration to KV-cache settings, monitoring and load testing.",
    answer="Artifact: quantize offline (AWQ/GPTQ checkpoint for GPU, GGUF for CPU/edge), evaluate it against "
           "the full-precision model on your eval sets, and version it with its calibration data and tool "
           "versions. Serving: a framework whose kernels support the format on your hardware (vLLM, TGI, "
           "TensorRT-LLM, SGLang; llama.cpp server on CPU), with continuous batching and paged attention. "
           "Configuration: quantization method, max_model_len, max concurrent sequences, gpu_memory_utilization "
           "and KV-cache dtype, which together fix capacity. Example: Llama-3-8B INT4 g128 ({w:.1f} GiB) on a "
           "{card} GiB GPU at {util} utilisation leaves room for {t16} tokens of fp16 KV cache ({t16_seq} "
           "concurrent 4K sequences) or {t8} with an FP8 cache ({t8_seq}); activations and CUDA graphs take "
           "some of it in practice. Load testing: replay realistic prompt/output length distributions at rising "
           "concurrency; record time to first token, inter-token latency p50/p99, throughput, and where "
           "preemption or OOM starts. Monitoring: the same latency and throughput metrics, KV-cache usage and "
           "preemptions, error rates, and quality: periodic KL/perplexity canaries against the reference model, "
           "sampled LLM-judge or task metrics on live traffic. Roll out behind a canary with automatic rollback.",
    follow_ups=("What would make you choose FP8 weights and activations over INT4 weight-only here?",
                "Which metric first shows a quantization bug that perplexity misses?"),
    compute=_stack)


# --- popular wrong numbers, corrected --------------------------------------------------------------------------

def _myth():
    return {"f16_gb": memory.gb(memory.weight_memory_bytes(L2_70B.n_params, "FP16")),
            "f16_gib": _w_gib(L2_70B, "FP16"),
            "f32_gb": memory.gb(memory.weight_memory_bytes(L2_70B.n_params, "FP32")),
            "codes_gb": memory.gb(memory.weight_memory_bytes(L2_70B.n_params, "INT4 (per-channel)")),
            "g128_gb": memory.gb(memory.weight_memory_bytes(L2_70B.n_params, "INT4-g128 (4-bit zero)")),
            "q4km_gb": _mix_gib(L2_70B, "Q4_K_M") * memory.BYTES_PER_GIB / memory.BYTES_PER_GB,
            "q4km_gib": _mix_gib(L2_70B, "Q4_K_M"), "n": L2_70B.n_params / 1e9,
            "kv_gb": memory.gb(L2_70B.kv_cache_bytes(CTX_4K)),
            "over": 100 * (160 / memory.gb(memory.weight_memory_bytes(L2_70B.n_params, "FP16")) - 1),
            "left_tok": int((40 - _mix_gib(L2_70B, "Q4_K_M")) * memory.BYTES_PER_GIB // L2_70B.kv_cache_bytes(1))}


question(
    id="ch15.myth_70b_40gb", chapter=CH, difficulty="medium", tags=("memory", "myths", "units"),
    question="A popular answer says a 70B model 'fits in 40 GB at 4-bit versus 160 GB in fp16'. Check both "
             "numbers.",
    answer="Llama-2-70B has {n:.1f} B parameters. FP16: {f16_gb:.1f} GB = {f16_gib:.1f} GiB; 160 GB overstates "
           "it by {over:.0f} %. 4-bit: the "
           "codes alone are {codes_gb:.1f} GB; with an fp16 scale and 4-bit zero per 128 weights {g128_gb:.1f} "
           "GB; a real Q4_K_M file {q4km_gb:.1f} GB ({q4km_gib:.1f} GiB). '40 GB' is right for the weights only "
           "if you mean GB and the file is a plain 4-bit-plus-scales format; add {kv_gb:.2f} GB of fp16 KV cache "
           "for one 4K sequence. On a '40 GB' card (40 GiB) Q4_K_M leaves room for {left_tok} tokens of fp16 KV "
           "cache before the CUDA context and activations take their share: it does not serve that model "
           "usefully.",
    follow_ups=("Which unit does your GPU monitoring report?", "What else besides the KV cache needs GPU memory at run time?"),
    quiz=Quiz(prompt="Llama-2-70B weights in FP16, in decimal GB?", value="f16_gb", rel_tol=0.02, unit="GB"),
    compute=_myth)


# --- more system design ----------------------------------------------------------------------------------------------

def _laptop():
    w = _mix_gib(L3_8B, "Q4_K_M")
    free = (LAPTOP_GIB - LAPTOP_RESERVE_GIB - w) * memory.BYTES_PER_GIB
    return {"w": w, "ram": LAPTOP_GIB, "res": LAPTOP_RESERVE_GIB,
            "ctx16": int(free // L3_8B.kv_cache_bytes(1)),
            "ctx8": int(free // L3_8B.kv_cache_bytes(1, bytes_per_element=1)),
            "max_ctx": L3_8B.max_context, "tps": DESKTOP_GBPS * memory.BYTES_PER_GB / (w * memory.BYTES_PER_GIB),
            "bw": DESKTOP_GBPS, "q5": _mix_gib(L3_8B, "Q5_K_M")}


question(
    id="ch15.laptop_assistant", chapter=CH, difficulty="hard", tags=("system-design", "edge", "gguf"),
    question="Design an offline assistant that runs Llama-3-8B on laptops with 16 GB of RAM.",
    answer="Memory first: {ram} GiB minus an assumed {res} GiB for the OS and apps leaves room for Q4_K_M weights "
           "({w:.2f} GiB; Q5_K_M would be {q5:.2f} GiB) and a KV cache of about {ctx16} tokens in fp16 or {ctx8} "
           "with an 8-bit cache, against the model's {max_ctx}-token window: cap the context there and summarise "
           "or retrieve beyond it. Speed: memory-bound, at an assumed {bw} GB/s at most {tps:.0f} tokens/s for "
           "decoding; prefill of long prompts is compute-bound, so use the GPU/NPU backend where present. Ship a "
           "GGUF made with an importance matrix from representative text, verify it against the FP16 model "
           "(KL, task checks), memory-map it so it loads instantly and shares pages, and fall back to a smaller "
           "model on 8 GB machines.",
    follow_ups=("How do you update the model without a 5 GB download each time?",),
    compute=_laptop)


def _gate():
    t = _tiny_eval()
    return {"kl4": t["kl4"], "kl3": t["kl3"], "top4": t["top4"], "top3": t["top3"], "n_tok": t["n_tok"],
            "se4": t["se_paired4"], "d4": t["dnll4"]}


question(
    id="ch15.quality_gate", chapter=CH, difficulty="hard", tags=("system-design", "evaluation", "ci"),
    question="Design an automatic quality gate that blocks a bad quantized model from shipping.",
    answer="Run in CI for every new artifact: (1) a fixed, versioned text set scored by both the reference and the "
           "candidate; compute per-token KL divergence, top-1 agreement and the paired NLL difference with its "
           "standard error. On qlearn-tiny ({n_tok} tokens) 4-bit RTN gives mean KL {kl4:.3e}, top-1 agreement "
           "{top4:.1f} %, NLL difference {d4:+.4f} +- {se4:.4f}; 3-bit gives {kl3:.3e} and {top3:.1f} %: "
           "thresholds between such values separate acceptable from not. (2) Task suites that matter to users "
           "(code, maths, long context, safety refusals), since perplexity can hide regressions in rare "
           "skills. (3) Bit-level checks: the file loads in the serving stack, dequantized weights match the "
           "quantizer's output, and a few fixed prompts give the stored outputs. Thresholds come from the "
           "spread between repeated runs of the reference, not from guesses.",
    follow_ups=("How would you keep the gate from being overfitted by repeated quantization attempts?",),
    compute=_gate)


# The 17 common interview questions of issue #15, in its order, mapped to the question answering each.
COMMON = {
    1: "ch15.what_is_quantization", 2: "ch15.symmetric_vs_asymmetric", 3: "ch15.per_tensor_vs_per_channel",
    4: "ch15.blockwise_gguf", 5: "ch15.gptq_vs_rounding", 6: "ch15.llama70b_64gb_ram",
    7: "ch15.measure_quality", 8: "ch15.qat_vs_ptq", 9: "ch15.speed_not_8x", 10: "ch15.multi_tenant_design",
    11: "ch15.gptq_awq_gguf", 12: "ch15.degradation_bits_size", 13: "ch15.qlora_nf4", 14: "ch15.choose_level",
    15: "ch15.scale_zero_point_math", 16: "ch15.kv_cache_long_context", 17: "ch15.production_stack",
}
