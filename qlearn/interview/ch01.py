"""Interview questions of chapter 1, *Why quantize*."""

from qlearn import memory
from qlearn.interview import Quiz, question

_M70 = memory.MODELS["Llama-2-70B"]
_CTX = 128 * 1024


def _kv():
    m = _M70
    right = m.kv_cache_bytes(_CTX)
    wrong = memory.kv_cache_bytes(m.layers, m.heads, m.head_dim, _CTX)
    return {"right_gib": memory.gib(right), "right_gb": memory.gb(right), "wrong_gib": memory.gib(wrong),
            "ratio": wrong / right, "L": m.layers, "hkv": m.kv_heads, "h": m.heads, "dh": m.head_dim,
            "per_tok_kib": m.kv_cache_bytes(1) / 2 ** 10}


question(id="ch01.kv70b", chapter="ch01", difficulty="medium", tags=("kv-cache", "memory", "gqa"),
         question="How large is the FP16 KV cache of Llama-2-70B at a 128K-token context, batch 1?",
         answer="{right_gib:.0f} GiB ({right_gb:.1f} GB): 2 (K and V) x {L} layers x {hkv} KV heads x "
                "{dh} head dim x 131072 tokens x 2 bytes, {per_tok_kib:.0f} KiB per token. The model "
                "uses grouped-query attention: {h} query heads share {hkv} KV heads. Plugging in {h} "
                "heads gives {wrong_gib:.0f} GiB, {ratio:.0f}x too much.",
         follow_ups=("How would an 8-bit KV cache change it?", "Why does GQA barely hurt quality?"),
         quiz=Quiz(prompt="FP16 KV cache of Llama-2-70B at 128K tokens, batch 1, in GiB?", value="right_gib", rel_tol=0.02, unit="GiB"),
    compute=_kv)


def _units():
    b = memory.weight_memory_bytes(_M70.n_params, "FP16")
    return {"n": _M70.n_params / 1e9, "gb": memory.gb(b), "gib": memory.gib(b),
            "pct": 100 * (memory.gb(b) / memory.gib(b) - 1)}


question(id="ch01.units", chapter="ch01", difficulty="easy", tags=("memory", "units"),
         question="A 70B model in FP16: how many GB, how many GiB, and which one does nvidia-smi show?",
         answer="Llama-2-70B has {n:.2f} B parameters x 2 bytes = {gb:.1f} GB = {gib:.1f} GiB; GPU tools "
                "report binary units (GiB, often labelled GB), so the same bytes look {pct:.1f} % "
                "smaller there than on the model card.",
         follow_ups=("Does it fit on one 80 GB card? What about two?", "Which unit does a Hugging Face model card use for file sizes?"), compute=_units)


def _q4k():
    lay = memory.FORMATS["Q4_K"]
    return {"bytes": lay.bytes_per_block, "bpw": lay.bits_per_weight, "block": lay.block,
            "gib": memory.gib(memory.weight_memory_bytes(_M70.n_params, "Q4_K")),
            "gib4": memory.gib(memory.weight_memory_bytes(_M70.n_params, "INT4 (per-channel)"))}


question(id="ch01.q4k_bpw", chapter="ch01", difficulty="medium", tags=("gguf", "bits-per-weight"),
         question="Why is GGUF Q4_K 'a 4-bit format' but 4.5 bits per weight? Derive it.",
         answer="A {block}-weight super-block stores 2 fp16 scales d and dmin (4 bytes), 8 sub-block "
                "6-bit scales and 6-bit mins packed in 12 bytes, and 128 bytes of 4-bit codes: "
                "{bytes:.0f} bytes x 8 / {block} = {bpw} bits per weight. Llama-2-70B in Q4_K is "
                "{gib:.1f} GiB, not the {gib4:.1f} GiB of pure 4-bit codes.",
         follow_ups=("What does the 'min' buy compared with Q4_0?", "Where do the 12 bytes of packed scales and mins come from?"), compute=_q4k)


def _nf4():
    return {"nf4": memory.bits_per_weight("NF4"), "dq": memory.bits_per_weight("NF4 + double quant"),
            "saved_gib": memory.gib(memory.weight_memory_bytes(_M70.n_params, "NF4")
                                    - memory.weight_memory_bytes(_M70.n_params, "NF4 + double quant"))}


question(id="ch01.double_quant", chapter="ch01", difficulty="hard", tags=("nf4", "bitsandbytes", "bits-per-weight"),
         question="What does bitsandbytes' double quantization save, and how?",
         answer="NF4 stores one fp32 absmax per 64 weights: 4 + 32/64 = {nf4} bits per weight. Double "
                "quantization stores those absmax values in 8 bits, with one fp32 scale per 256 of them: "
                "4 + 8/64 + 32/(64 x 256) = {dq:.4f} bpw. On a 70B model that saves {saved_gib:.1f} GiB.",
         follow_ups=("Why quantize the absmax with blocks of 256 and not per tensor?", "How much would it save on a 7B model, and is that worth the extra dequantization step?"), compute=_nf4)


# --- more questions ------------------------------------------------------------------------

_M7, _M13 = memory.MODELS["Llama-2-7B"], memory.MODELS["Llama-2-13B"]
FLOPS_PER_WEIGHT = 2  # one multiply and one add per weight per token (a matrix-vector product)
DESKTOP_GBPS = 80  # assumed memory bandwidth of a dual-channel DDR5 desktop, GB/s (an input, not a result)
ADAMW_BYTES = 16  # mixed-precision AdamW per parameter: fp16 weight 2 + fp16 grad 2 + fp32 master 4 + 2 moments 8
CARD_GIB = 24  # a 24 GiB consumer card (RTX 3090/4090)


def _decode_bound():
    out = {"bw": DESKTOP_GBPS, "n": _M7.n_params / 1e9}
    for key, fmt in (("f16", "FP16"), ("q8", "Q8_0"), ("q4", "Q4_K")):
        b = memory.weight_memory_bytes(_M7.n_params, fmt)
        out[key] = DESKTOP_GBPS * memory.BYTES_PER_GB / b
        out[key + "_gb"] = memory.gb(b)
    out["intensity"] = FLOPS_PER_WEIGHT / 2  # FLOPs per byte of fp16 weight
    return out


question(id="ch01.decode_bound", chapter="ch01", difficulty="hard", tags=("speed", "memory-bandwidth", "decode"),
         question="Why is single-stream token generation memory-bound, and what does that predict for the "
                  "speed of a quantized 7B model on a desktop CPU?",
         answer="Generating one token multiplies every weight once (a matrix-vector product): 2 FLOPs per "
                "weight, so an fp16 weight gives {intensity:.0f} FLOP per byte read, far below what any CPU or "
                "GPU can compute per byte it loads. The time per token is then bytes of weights / memory "
                "bandwidth. Llama-2-7B ({n:.2f} B parameters) at an assumed {bw} GB/s: FP16 ({f16_gb:.1f} GB) "
                "at most {f16:.1f} tokens/s, Q8_0 ({q8_gb:.1f} GB) {q8:.1f}, Q4_K ({q4_gb:.1f} GB) {q4:.1f}. "
                "These are ceilings: the KV cache, activations and dequantization add to them.",
         follow_ups=("Why does prefill (processing the prompt) behave differently?",
                     "At what batch size does decoding become compute-bound?"),
         compute=_decode_bound,
         quiz=Quiz(prompt="Upper bound on Llama-2-7B Q4_K decode speed at 80 GB/s (tokens/s)?",
                   value="q4", rel_tol=0.05, unit="tokens/s"))


def _fit13():
    fmts = ("FP16", "Q8_0", "Q6_K", "Q4_K", "INT4-g128 (symmetric)")
    ok = [f for f in fmts if memory.fits_on_gpu(_M13, f, CARD_GIB, context=4096)]
    return {"ok": ", ".join(ok), "no": ", ".join(f for f in fmts if f not in ok),
            "kv": memory.gib(_M13.kv_cache_bytes(4096)), "card": CARD_GIB,
            "q8": memory.gib(memory.weight_memory_bytes(_M13.n_params, "Q8_0")),
            "f16": memory.gib(memory.weight_memory_bytes(_M13.n_params, "FP16"))}


question(id="ch01.fit13b", chapter="ch01", difficulty="medium", tags=("memory", "kv-cache", "deployment"),
         question="Which storage formats let Llama-2-13B serve one 4K-token sequence on a 24 GiB GPU?",
         answer="Weights plus KV cache must fit: the 4K fp16 KV cache alone is {kv:.2f} GiB (13B has no "
                "GQA). Fits: {ok}. Does not fit: {no}. FP16 weights alone are {f16:.1f} GiB, Q8_0 {q8:.1f} GiB. "
                "Leave room for activations and the CUDA context on top of this.",
         follow_ups=("How long a context fits beside Q4_K weights?", "What does a batch of 8 change?"),
         compute=_fit13, chain="fit-a-gpu")


def _ctx13():
    return {"ctx_q4": memory.max_context_that_fits(_M13, "Q4_K", CARD_GIB),
            "ctx_q8": memory.max_context_that_fits(_M13, "Q8_0", CARD_GIB),
            "ctx_q4_kv8": memory.max_context_that_fits(_M13, "Q4_K", CARD_GIB, kv_bytes_per_element=1),
            "per_tok": _M13.kv_cache_bytes(1) / 2 ** 20, "card": CARD_GIB}


question(id="ch01.max_context", chapter="ch01", difficulty="medium", tags=("kv-cache", "memory", "context"),
         question="Following on: with Q4_K weights on that 24 GiB card, how long a context fits, and what "
                  "buys more?",
         answer="Each token costs {per_tok:.2f} MiB of fp16 KV cache, so after the weights about {ctx_q4} tokens "
                "fit (Q8_0 weights: {ctx_q8}). An 8-bit KV cache doubles it to {ctx_q4_kv8}; smaller weights "
                "help less than a smaller cache once the context is long. Nothing is left for activations here, "
                "so the real limit is lower.",
         follow_ups=("Why does grouped-query attention matter more than weight bits at 32K context?", "How would a batch of 8 sequences change the answer?"),
         compute=_ctx13, chain="fit-a-gpu", after="ch01.fit13b")


def _q2k():
    from qlearn import gguf_mixes

    c = gguf_mixes.ModelConfig(n_layers=_M70.layers, dim=_M70.hidden, ffn_dim=_M70.intermediate,
                               vocab=_M70.vocab, n_heads=_M70.heads, n_kv_heads=_M70.kv_heads)
    mix = gguf_mixes.mix_bpw("Q2_K", c)
    kinds = {}
    for name, t in gguf_mixes.mix_plan("Q2_K", c).items():
        kind = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
        if t not in ("Q2_K", "F32"):
            kinds.setdefault(f"{kind} {t}", 0)
            kinds[f"{kind} {t}"] += 1
    kv = memory.gib(_M70.kv_cache_bytes(4096))
    w_type = memory.gib(memory.weight_memory_bytes(_M70.n_params, "Q2_K"))
    w_mix = memory.gib(_M70.n_params * mix / 8)
    return {"type_bpw": memory.bits_per_weight("Q2_K"), "mix_bpw": mix, "w_type": w_type, "w_mix": w_mix,
            "kv": kv, "total": w_mix + kv, "card": CARD_GIB,
            "promoted": ", ".join(f"{k} (x{n})" for k, n in sorted(kinds.items()))}


question(id="ch01.q2k_mix", chapter="ch01", difficulty="hard", tags=("gguf", "mixes", "memory", "myths"),
         question="Does Llama-2-70B fit a 24 GiB card if you quantize it to GGUF Q2_K?",
         answer="Not as a real file. The Q2_K block type costs {type_bpw:.4g} bits per weight ({w_type:.1f} GiB "
                "for 70B), but llama-quantize's Q2_K is a mix that stores some tensors in larger types ({promoted}): "
                "{mix_bpw:.2f} bpw on average, {w_mix:.1f} GiB. With "
                "the 4K fp16 KV cache ({kv:.2f} GiB) that is {total:.1f} GiB > {card} GiB before any activation.",
         follow_ups=("Which tensors does the Q2_K mix promote, and why those?",
                     "What would you do instead: offload layers to the CPU, or a smaller model?"),
         compute=_q2k)


def _params():
    parts = _M7.parameter_breakdown()
    n = _M7.n_params
    return {"n": n / 1e9, "mlp": 100 * parts["mlp"] / n, "attn": 100 * parts["attention"] / n,
            "emb": 100 * (parts["embed_tokens"] + parts["lm_head"]) / n, "d": _M7.hidden, "L": _M7.layers,
            "ff": _M7.intermediate}


question(id="ch01.param_count", chapter="ch01", difficulty="medium", tags=("memory", "architecture"),
         question="Count the parameters of Llama-2-7B from its config. Where do they sit?",
         answer="Per layer: attention 4 d^2 (q, k, v, o with d = {d}) and a SwiGLU MLP 3 d x {ff}; times {L} "
                "layers, plus the input embedding and the untied lm_head (32000 x d each). Total {n:.3f} B: "
                "MLP {mlp:.1f} %, attention {attn:.1f} %, embedding + lm_head {emb:.1f} %. Quantizing the linears "
                "of the blocks covers all but the last share, which is why GGUF mixes treat token_embd and "
                "output separately.",
         follow_ups=("How does grouped-query attention change the count for Llama-2-70B?", "Why is lm_head worth keeping in higher precision even though it is a small share?"),
         compute=_params)


def _train():
    n = _M7.n_params
    return {"train": memory.gib(n * ADAMW_BYTES), "infer": memory.gib(memory.weight_memory_bytes(n, "FP16")),
            "bytes": ADAMW_BYTES, "ratio": ADAMW_BYTES / 2}


question(id="ch01.train_vs_infer", chapter="ch01", difficulty="easy", tags=("memory", "training"),
         question="Why does fine-tuning a 7B model need several times the memory of serving it?",
         answer="Serving holds the weights: {infer:.1f} GiB in fp16. Full fine-tuning with mixed-precision "
                "AdamW holds, per parameter, the fp16 weight and gradient, an fp32 master copy and two fp32 "
                "moments: {bytes} bytes, {train:.0f} GiB ({ratio:.0f}x) before activations. That gap is what "
                "LoRA and QLoRA remove.",
         follow_ups=("Which of those bytes does LoRA remove, and which does QLoRA remove?", "What else grows with batch and sequence length during training?"),
         compute=_train)
