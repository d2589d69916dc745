"""Interview questions of chapter 14, choosing a quantization. Every number is computed by qlearn
(memory arithmetic, llama.cpp's per-tensor rules) or read from the measured quality table."""
from __future__ import annotations

from qlearn import deploy, gguf_mixes, memory
from qlearn.interview import question

GIB = memory.BYTES_PER_GIB


def _gcfg(name: str) -> gguf_mixes.ModelConfig:
    m = memory.MODELS[name]
    return gguf_mixes.ModelConfig(n_layers=m.layers, dim=m.hidden, ffn_dim=m.intermediate, vocab=m.vocab,
                                  n_heads=m.heads, n_kv_heads=m.kv_heads, tied_embeddings=m.tied)


def _weights_gib(name: str, mix: str) -> float:
    return memory.MODELS[name].n_params * gguf_mixes.mix_bpw(mix, _gcfg(name)) / 8 / GIB


def _kv_gib(name: str, context: int, batch: int = 1) -> float:
    return memory.MODELS[name].kv_cache_bytes(context, batch) / GIB


def _row(rid: str) -> dict:
    rows = deploy.quality_table()["rows"]
    if rid not in rows:
        raise ValueError(f"row {rid!r} missing from the quality table: run benchmarks/quality_table.py")
    return rows[rid]


def _pct(rid: str) -> float:
    return 100 * (_row(rid)["ppl"] / _row("baseline")["ppl"] - 1)


def _70b():
    w = _weights_gib("Llama-2-70B", "Q4_K_M")
    kv = _kv_gib("Llama-2-70B", 4096)
    return {"bpw": gguf_mixes.mix_bpw("Q4_K_M", _gcfg("Llama-2-70B")), "w": w, "kv": kv, "tot": w + kv,
            "fits": "yes" if w + kv + 0.5 <= 48 else "no"}


question(
    id="ch14.llama70b_48gib", chapter="ch14", difficulty="medium", tags=("deployment", "memory", "gguf"),
    question="Does Llama-2-70B in Q4_K_M fit on two 24 GiB GPUs (48 GiB) with a 4096-token context?",
    answer=("Weights: Q4_K_M averages {bpw:.2f} bits per weight on Llama-2-70B's shapes, {w:.1f} GiB. "
            "KV cache in fp16: 2 x 80 layers x 8 KV heads x 128 x 4096 tokens x 2 bytes = {kv:.2f} GiB "
            "(grouped-query attention keeps it small). Total {tot:.1f} GiB before runtime buffers: {fits}, "
            "with little room for batching."),
    follow_ups=("How long a context fits in what is left?", "What changes with 64 KV heads?"),
    compute=_70b,
)


def _kv8b():
    return {"w": _weights_gib("Llama-3-8B", "Q4_K_M"), "kv": _kv_gib("Llama-3-8B", 32768),
            "kv8": _kv_gib("Llama-3-8B", 32768, 8)}


question(
    id="ch14.kv_dominates", chapter="ch14", difficulty="medium", tags=("deployment", "kv-cache"),
    question="Serving Llama-3-8B in Q4_K_M with 32K-token contexts: what dominates memory?",
    answer=("The weights take {w:.1f} GiB; one 32K-token fp16 KV cache takes {kv:.1f} GiB and a batch of "
            "8 such sequences {kv8:.1f} GiB. Past a few sequences the KV cache, not the weight format, "
            "decides the GPU: quantizing the cache (8-bit halves it) or paging it matters more than Q4 vs Q5."),
    follow_ups=("Why does grouped-query attention matter here?",),
    compute=_kv8b,
)


def _bpw7b():
    c = gguf_mixes.LLAMA2_7B
    return {"m": gguf_mixes.mix_bpw("Q4_K_M", c), "s": gguf_mixes.mix_bpw("Q4_K_S", c),
            "q4k": gguf_mixes.bits_per_weight("Q4_K"), "q6k": gguf_mixes.bits_per_weight("Q6_K")}


question(
    id="ch14.q4km_bpw", chapter="ch14", difficulty="easy", tags=("gguf", "mixes"),
    question="Q4_K is 4.5 bits per weight. Why is a Q4_K_M Llama-2-7B file {m:.2f} bits per weight?",
    answer=("Q4_K_M is a mix, not a type: the LM head is Q6_K ({q6k} bpw), and attn_v and ffn_down of "
            "the first and last eighth of the layers and every third layer between get Q6_K. Averaged over "
            "all weights that is {m:.3f} bpw; Q4_K_S, which lifts fewer tensors, is {s:.3f}."),
    follow_ups=("Why protect ffn_down and attn_v rather than attn_q?",),
    compute=_bpw7b,
)


def _fallback():
    c = _gcfg("SmolLM2-135M")
    p = gguf_mixes.mix_plan("Q4_K_M", c)
    n = sum(1 for t in p.values() if t == "Q5_0")
    return {"n": n, "dim": c.dim, "rem": c.dim % 256, "emb": p["token_embd.weight"],
            "bpw": gguf_mixes.mix_bpw("Q4_K_M", c), "bpw7": gguf_mixes.mix_bpw("Q4_K_M", gguf_mixes.LLAMA2_7B)}


question(
    id="ch14.row_fallback", chapter="ch14", difficulty="medium", tags=("gguf", "mixes", "small-models"),
    question="A SmolLM2-135M Q4_K_M file contains Q5_0 and Q8_0 tensors. Why?",
    answer=("k-quant blocks hold 256 weights along a row, and SmolLM2's rows are {dim} long ({dim} mod "
            "256 = {rem}). llama-quantize then falls back to a 32-weight type: Q4_K -> Q5_0 ({n} tensors), "
            "Q6_K -> Q8_0. The tied embedding/LM head becomes {emb}. The file averages {bpw:.2f} bits "
            "per weight, far above the {bpw7:.2f} of Llama-2-7B."),
    follow_ups=("Which SmolLM2 tensors do keep Q4_K?",),
    compute=_fallback,
)


def _small_q2k():
    c = _gcfg("SmolLM2-135M")
    return {"q2": gguf_mixes.mix_bpw("Q2_K", c), "q2_7b": gguf_mixes.mix_bpw("Q2_K", gguf_mixes.LLAMA2_7B),
            "emb": 100 * c.vocab * c.dim / memory.MODELS["SmolLM2-135M"].n_params}


question(
    id="ch14.small_models_do_not_shrink", chapter="ch14", difficulty="medium", tags=("gguf", "small-models"),
    question="Why is Q2_K a poor deal for a 135M-parameter model?",
    answer=("The embedding is {emb:.0f} % of SmolLM2's parameters and, being the tied LM head, stays "
            "Q8_0; the 576-wide rows push the rest to 32-weight fallbacks. Q2_K therefore averages "
            "{q2:.2f} bits per weight on SmolLM2 against {q2_7b:.2f} on Llama-2-7B: you pay most of the "
            "quality loss and get a fraction of the saving."),
    follow_ups=("At what model size does the embedding stop mattering?",),
    compute=_small_q2k,
)


def _q8():
    return {"q8": _pct("Q8_0"), "q6": _pct("Q6_K"), "base": _row("baseline")["ppl"]}


question(
    id="ch14.q8_is_free", chapter="ch14", difficulty="easy", tags=("gguf", "quality", "measured"),
    question="How much perplexity does Q8_0 cost, measured?",
    answer=("On SmolLM2-135M (baseline perplexity {base:.2f}, llama-perplexity protocol) Q8_0 adds "
            "{q8:+.2f} % and Q6_K {q6:+.2f} %: 8-bit weights with a scale per 32 weights are as good "
            "as the baseline on this text. The interesting decisions are below 6 bits."),
    follow_ups=("Why does a larger model lose even less?",),
    compute=_q8,
)


def _q5():
    return {"q5": _pct("Q5_K_M"), "q6": _pct("Q6_K"), "q8": _pct("Q8_0")}


question(
    id="ch14.requantization", chapter="ch14", difficulty="hard", tags=("gguf", "quality", "baseline"),
    question="Our SmolLM2 baseline was dequantized from a Q4_1 file. What does that do to the table?",
    answer=("Its weights already sit on a 16-level grid per 32 weights. Types whose grid can represent "
            "those levels lose almost nothing (Q8_0 {q8:+.2f} %, Q6_K {q6:+.2f} %), while a 5-bit type "
            "whose levels fall between them adds its full rounding error on top (Q5_K_M {q5:+.2f} %): "
            "measured differences mix format quality with grid alignment. We expect (not measured here: "
            "the bf16 originals are not on PyPI) a smoother ordering from bf16 weights; the lesson is to "
            "quantize from the highest-precision weights you have."),
    follow_ups=("Which preset would reproduce the Q4_1 weights exactly, and why?",),
    compute=_q5,
)


def _protocol():
    return {"half": 512 // 2, "scored": 512 - 1 - 512 // 2}


question(
    id="ch14.ppl_protocol", chapter="ch14", difficulty="medium", tags=("evaluation", "llama.cpp"),
    question="Two papers report different perplexities for the same model and text. What protocol "
             "does llama-perplexity use, and why does it matter?",
    answer=("llama-perplexity cuts the text into non-overlapping chunks of n_ctx tokens (512 by "
            "default), evaluates each from an empty cache, and scores only the second half: {scored} "
            "tokens per chunk, each with at least {half} tokens of context. Scoring every token of a "
            "window includes tokens with almost no context and gives a higher number; a sliding window "
            "gives a lower one. Compare numbers only under one protocol (and one tokenizer)."),
    follow_ups=("What does bits per byte fix that perplexity does not?",),
    compute=_protocol,
)


def _rec13b():
    opts = deploy.recommend("Llama-2-13B", 24, 4096)
    best = opts[0]
    return {"n": len(opts), "best": best.name, "bpw": best.bits_per_weight,
            "gib": best.total_bytes / GIB, "f16": memory.weight_memory_bytes(
                memory.MODELS["Llama-2-13B"].n_params, "FP16") / GIB}


question(
    id="ch14.recommend_13b_24gib", chapter="ch14", difficulty="medium", tags=("deployment", "recommend"),
    question="What would you run Llama-2-13B in on a 24 GiB GPU with 4096-token contexts?",
    answer=("fp16 weights alone are {f16:.1f} GiB, so quantize. qlearn.deploy.recommend keeps "
            "{n} options that fit (weights + KV + 0.5 GiB reserve) and ranks them by measured quality: "
            "the best is {best} at {bpw:.2f} bits per weight, {gib:.1f} GiB in all. Prefer the "
            "highest-quality preset that leaves room for the KV cache you need."),
    follow_ups=("What changes for a batch of 8?",),
    compute=_rec13b,
)


def _gptq_vs_gguf():
    m = memory.MODELS["Llama-2-70B"]
    gptq = memory.weight_memory_bytes(m.n_params, "INT4-g128 (4-bit zero)") / GIB
    return {"gptq": gptq, "q4km": _weights_gib("Llama-2-70B", "Q4_K_M"),
            "q4ks": _weights_gib("Llama-2-70B", "Q4_K_S")}


question(
    id="ch14.gptq_vs_gguf_size", chapter="ch14", difficulty="easy", tags=("deployment", "gptq", "gguf"),
    question="Llama-2-70B as GPTQ 4-bit g128 or as GGUF Q4_K_M: which file is smaller?",
    answer=("GPTQ 4-bit g128 with a 4-bit zero point stores about {gptq:.1f} GiB if every weight were "
            "quantized (deployments keep embeddings and head in fp16, adding more); Q4_K_M is "
            "{q4km:.1f} GiB and Q4_K_S {q4ks:.1f} GiB. They are close: choose by runtime (GPU kernels "
            "for GPTQ/AWQ in vLLM/TGI, CPU and Apple GPUs for GGUF in llama.cpp), not by size."),
    follow_ups=("Which serving stacks load both?",),
    compute=_gptq_vs_gguf,
)
