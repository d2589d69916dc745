"""Importance matrix (llama.cpp's ``llama-imatrix``): how much each input column matters.

For a linear layer ``y = W @ a`` the error a weight perturbation ``dW[:, j]`` causes is
``dW[:, j] * a_j``, so its expected squared size over the calibration data scales with
``E[a_j^2]``. llama.cpp therefore records, per weight matrix and per input column ``j``, the
mean of the squared activations that reached that column, and the k-quant search weighs each
weight's squared error by it (``quantize(x, qtype, imatrix=...)``). One vector of
``in_features`` numbers per matrix, shared by all its rows.

Files: ``llama-imatrix`` saves a GGUF file (``general.type = "imatrix"``) holding, per weight
matrix ``NAME``, two float32 tensors: ``NAME.in_sum2`` (the *sum* of squared activations per
column) and ``NAME.counts`` (how many tokens were summed), plus ``imatrix.datasets``,
``imatrix.chunk_count`` and ``imatrix.chunk_size``. ``llama-quantize`` divides the sums by the
count in float32; :func:`read_imatrix` does the same, :func:`write_imatrix` writes the format.
:func:`compute_model_imatrix` runs a qlearn model over a text and collects the same statistic
for every linear layer, named as in GGUF (``blk.3.ffn_down.weight``).
"""

from __future__ import annotations

import numpy as np

from qlearn import validate

__all__ = ["compute_imatrix", "read_imatrix", "write_imatrix", "compute_model_imatrix"]

IMATRIX_TYPE = "imatrix"  # general.type of an imatrix GGUF file


def compute_imatrix(activations: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mean of squared activations per input column, per weight matrix.

    activations: name -> ``(tokens, in_features)`` float32, the inputs captured at that linear
        layer (e.g. ``qlearn.adapters.capture_inputs``); torch tensors are accepted too.
    Returns name -> ``(in_features,)`` float32 with ``imatrix[j] = mean_t a[t, j]^2``,
    accumulated in float64 (llama.cpp sums in float32 over chunks; the difference is rounding).
    """
    if not isinstance(activations, dict) or not activations:
        raise ValueError(f"activations must be a non-empty dict name -> (tokens, in_features) "
                         f"array, got {type(activations).__name__} {activations if isinstance(activations, dict) else ''}")
    out = {}
    for name, a in activations.items():
        if hasattr(a, "detach"):  # torch.Tensor
            a = a.detach().cpu().numpy()
        a = validate.float_array(a, f"activations[{name!r}]", dtype=np.float64, finite=False,
                                 allow_empty=True)
        if a.ndim != 2:
            raise ValueError(
                f"activations[{name!r}] must be (tokens, in_features), got shape {a.shape} "
                "(flatten batch and sequence: a.reshape(-1, a.shape[-1]))"
            )
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise ValueError(f"activations[{name!r}] is empty, shape {a.shape}: capture at least one token")
        if a.dtype.kind != "f":
            raise ValueError(f"activations[{name!r}] must be floating point, got {a.dtype}")
        if not np.isfinite(a).all():
            raise ValueError(
                f"activations[{name!r}] must be finite, got {int((~np.isfinite(a)).sum())} NaN/Inf "
                "values; fix the model run before computing an imatrix"
            )
        a64 = a.astype(np.float64)
        out[name] = (np.einsum("tj,tj->j", a64, a64) / a.shape[0]).astype(np.float32)
    return out


def read_imatrix(path) -> dict[str, np.ndarray]:
    """Read a ``llama-imatrix`` GGUF file: GGUF tensor name -> ``(in_features,)`` float32 means.

    Each mean is ``in_sum2 / counts`` computed in float32, exactly as ``llama-quantize`` does (a
    matrix that saw no token gets ones). Raises ValueError for a file that is not an imatrix.
    """
    from pathlib import Path

    import gguf

    path = Path(validate.path(path))
    if not path.is_file():
        raise ValueError(f"expected an imatrix file, got no imatrix file at {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - gguf raises bare ValueError/struct errors on bad files
        raise ValueError(f"{path} is not a GGUF file ({e}); llama-imatrix writes GGUF by default") from None
    field = reader.fields.get("general.type")
    if field is None or field.contents() != IMATRIX_TYPE:
        raise ValueError(f"{path} is a GGUF file but not an imatrix (general.type is not 'imatrix')")
    data = {t.name: np.array(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
    out = {}
    for tname, sums in data.items():
        if not tname.endswith(".in_sum2"):
            continue
        name = tname[: -len(".in_sum2")]
        counts = data.get(name + ".counts")
        if counts is None or counts.size != 1:
            raise ValueError(f"{path}: {name} has no single .counts entry (experts are not supported)")
        c = np.float32(counts[0])
        out[name] = (sums / c).astype(np.float32) if c > 0 else np.ones_like(sums)
    if not out:
        raise ValueError(f"{path} holds no .in_sum2 tensors")
    return out


def write_imatrix(path, imatrix: dict[str, np.ndarray], n_tokens: int, chunk_size: int = 512,
                  datasets: tuple[str, ...] = ("qlearn",)):
    """Write means ``name -> (in_features,)`` as a llama-imatrix GGUF file (sums = mean * n_tokens).

    n_tokens: tokens the means were taken over (the ``counts``); chunk_size: tokens per chunk.
    Returns the path; ``llama-quantize --imatrix path`` accepts it.
    """
    from pathlib import Path

    from .gguf_io import write_gguf

    path = validate.path(path)
    if not isinstance(imatrix, dict) or not imatrix:
        raise ValueError(f"imatrix must be a non-empty dict GGUF tensor name -> (in_features,) "
                         f"array, got {type(imatrix).__name__}")
    validate.integer(n_tokens, "n_tokens", lo=1)
    validate.integer(chunk_size, "chunk_size", lo=1)
    tensors = {}
    for name in sorted(imatrix):
        v = validate.float_array(imatrix[name], f"imatrix[{name!r}]").reshape(-1)
        if (v < 0).any():
            raise ValueError(f"imatrix[{name!r}] must be non-negative, got minimum {v.min()}")
        tensors[name + ".in_sum2"] = ((v * np.float32(n_tokens)).reshape(1, -1), "F32")
        tensors[name + ".counts"] = (np.full((1, 1), n_tokens, dtype=np.float32), "F32")
    meta = {"general.type": IMATRIX_TYPE, "imatrix.datasets": list(datasets),
            "imatrix.chunk_count": int(n_tokens // chunk_size), "imatrix.chunk_size": int(chunk_size)}
    return write_gguf(Path(path), tensors, meta, arch="llama")


def compute_model_imatrix(model, tokenizer, text, n_ctx: int = 512, n_chunks: int | None = None
                          ) -> tuple[dict[str, np.ndarray], int]:
    """Importance matrix of every linear layer of a qlearn Llama model, like ``llama-imatrix``.

    The text is tokenized (no BOS), cut into non-overlapping chunks of ``n_ctx`` tokens (the
    last partial chunk is dropped, at most ``n_chunks`` are used), and each chunk is run
    through the model; forward hooks sum the squared inputs of each block linear layer.
    Returns ``(imatrix, n_tokens)``: GGUF tensor name -> ``(in_features,)`` float32 mean
    squared activation, and the number of tokens (pass both to :func:`write_imatrix`).
    """
    import torch

    from .export import BLOCK_NAMES, _config

    _config(model)  # a LlamaModel, or a TypeError that says so
    validate.tokenizer(tokenizer)
    validate.text(text)
    validate.integer(n_ctx, "n_ctx", lo=1)
    validate.optional_integer(n_chunks, "n_chunks", lo=1)
    ids = tokenizer.encode(text)
    n = len(ids) // n_ctx if n_ctx > 0 else 0
    if n_chunks is not None:
        n = min(n, n_chunks)
    if n < 1:
        raise ValueError(f"need at least n_ctx={n_ctx} tokens, got {len(ids)} in the text")
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(model.layers):
        for hf, gg in BLOCK_NAMES.items():
            mod = layer.get_submodule(hf)
            if not isinstance(mod, torch.nn.Linear):
                continue
            key = f"blk.{i}.{gg}.weight"

            def hook(_m, inp, _out, key=key):
                a = inp[0].detach().reshape(-1, inp[0].shape[-1]).double()
                sums[key] = sums.get(key, 0) + (a * a).sum(0)

            hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for c in range(n):
                model(torch.tensor([ids[c * n_ctx:(c + 1) * n_ctx]], dtype=torch.int64))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    n_tokens = n * n_ctx
    return {k: (v / n_tokens).float().numpy() for k, v in sums.items()}, n_tokens
