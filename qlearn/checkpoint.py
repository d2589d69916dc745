"""Reading safetensors checkpoints safely: the header is checked before any tensor is read.

A safetensors file is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON, then
the data section. The JSON maps each tensor name to ``{"dtype", "shape", "data_offsets":
[begin, end]}`` (offsets relative to the data section) and may hold ``"__metadata__"`` (str ->
str). :func:`check_safetensors` verifies all of it -- header length inside the file, JSON
object, known dtypes, non-negative integer shapes, offsets inside the data section, byte
lengths equal to ``prod(shape) * itemsize``, no two tensors overlapping, the expected tensors
present -- and raises ``ValueError("corrupt safetensors: ...")`` naming what it found.
:func:`load_safetensors` then reads the tensors with the ``safetensors`` library.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

from qlearn import validate

__all__ = ["DTYPE_BYTES", "check_safetensors", "load_safetensors"]

HEADER_LENGTH_BYTES = 8
# safetensors dtype name -> bytes per element
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
METADATA_KEY = "__metadata__"


def _corrupt(path: Path, what: str) -> ValueError:
    return ValueError(f"corrupt safetensors: {path}: {what}")


def check_safetensors(path, expected: Iterable[str] | None = None) -> dict:
    """The checked header of the safetensors file at ``path``: ``{name: {"dtype", "shape",
    "data_offsets"}}`` plus ``"__metadata__"`` when present.

    expected: tensor names that must be present. Raises ``ValueError("corrupt safetensors:
    ...")`` for a truncated file, a header length past the end, a header that is not a JSON
    object, an unknown dtype, a bad shape, offsets outside the data section or overlapping,
    a byte length that does not match dtype and shape, or a missing expected tensor.
    """
    path = validate.path(path)
    if not path.is_file():
        raise ValueError(f"expected a safetensors file, got no file at {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_LENGTH_BYTES)
        if len(head) < HEADER_LENGTH_BYTES:
            raise _corrupt(path, f"expected at least {HEADER_LENGTH_BYTES} bytes (the header "
                                 f"length), got a file of {size} bytes")
        n = int.from_bytes(head, "little")
        if n < 2 or HEADER_LENGTH_BYTES + n > size:
            raise _corrupt(path, f"header length {n} does not fit a file of {size} bytes "
                                 f"(truncated file or bad header length)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(path, f"the header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, f"the header must be a JSON object, got {type(header).__name__}")
    meta = header.get(METADATA_KEY, {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in meta.items()):
        raise _corrupt(path, f"{METADATA_KEY} must map str to str, got {meta!r:.80}")
    data_len = size - HEADER_LENGTH_BYTES - n
    spans = []
    for name, info in header.items():
        if name == METADATA_KEY:
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise _corrupt(path, f"tensor {name!r} must have dtype, shape and data_offsets, "
                                 f"got {info!r:.80}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_BYTES:
            raise _corrupt(path, f"tensor {name!r} has unknown dtype {dtype!r} (expected one "
                                 f"of {sorted(DTYPE_BYTES)})")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise _corrupt(path, f"tensor {name!r} has shape {shape!r}, expected a list of "
                                 f"non-negative ints")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise _corrupt(path, f"tensor {name!r} has data_offsets {offsets!r}, expected "
                                 f"[begin, end] with 0 <= begin <= end")
        begin, end = offsets
        if end > data_len:
            raise _corrupt(path, f"tensor {name!r} ends at byte {end} of the data section, "
                                 f"which holds {data_len} bytes (truncated file?)")
        want = math.prod(shape) * DTYPE_BYTES[dtype]
        if end - begin != want:
            raise _corrupt(path, f"tensor {name!r} is {dtype} {shape}: expected {want} bytes, "
                                 f"got data_offsets spanning {end - begin}")
        spans.append((begin, end, name))
    spans.sort()
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise _corrupt(path, f"tensors {a!r} and {b!r} overlap (bytes {begin_b}..{end_a})")
    missing = sorted(set(expected or ()) - set(header))
    if missing:
        raise _corrupt(path, f"expected tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}"
                             f" are missing (got {len(spans)} tensors)")
    return header


def load_safetensors(path, expected: Iterable[str] | None = None
                     ) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:  # noqa: F821
    """``({name: torch tensor}, metadata)`` of a checked safetensors file (see
    :func:`check_safetensors`); the tensors are read by the ``safetensors`` library."""
    from safetensors import safe_open

    header = check_safetensors(path, expected)
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any failure left after the header checks
        raise _corrupt(Path(path), f"{type(e).__name__}: {e}") from None
    return tensors, dict(header.get(METADATA_KEY, {}))
