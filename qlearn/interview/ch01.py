"""Interview questions of chapter 1, *Why quantize*."""

from qlearn import memory
from qlearn.interview import question

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
         follow_ups=("Does it fit on one 80 GB card? What about two?",), compute=_units)


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
         follow_ups=("What does the 'min' buy compared with Q4_0?",), compute=_q4k)


def _nf4():
    return {"nf4": memory.bits_per_weight("NF4"), "dq": memory.bits_per_weight("NF4 + double quant"),
            "saved_gib": memory.gib(memory.weight_memory_bytes(_M70.n_params, "NF4")
                                    - memory.weight_memory_bytes(_M70.n_params, "NF4 + double quant"))}


question(id="ch01.double_quant", chapter="ch01", difficulty="hard", tags=("nf4", "bitsandbytes", "bits-per-weight"),
         question="What does bitsandbytes' double quantization save, and how?",
         answer="NF4 stores one fp32 absmax per 64 weights: 4 + 32/64 = {nf4} bits per weight. Double "
                "quantization stores those absmax values in 8 bits, with one fp32 scale per 256 of them: "
                "4 + 8/64 + 32/(64 x 256) = {dq:.4f} bpw. On a 70B model that saves {saved_gib:.1f} GiB.",
         follow_ups=("Why quantize the absmax with blocks of 256 and not per tensor?",), compute=_nf4)
