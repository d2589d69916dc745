"""Write and read GGUF files with per-tensor quantization types, using the ``gguf`` package.

GGUF is llama.cpp's single-file model format: a header of typed key/value metadata, a table of
tensor descriptions (name, shape, ggml type, offset), then the aligned tensor data. The
container itself is written and parsed by the ``gguf`` package (``gguf.GGUFWriter`` /
``gguf.GGUFReader``); this module only decides what goes in and unpacks what comes out.

Shapes are given and returned in numpy order: a weight ``W: (out_features, in_features)`` has
shape ``(rows, cols)``. GGUF stores dimensions innermost first, so ``GGUFReader`` lists the same
tensor as ``[cols, rows]``; :func:`read_gguf` reverses it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["FLOAT_TYPES", "default_quantizer", "write_gguf", "read_gguf"]

# Unquantized ggml types and the numpy dtype they are stored as.
FLOAT_TYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
_INT_TYPES = {"I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64}
_PLAIN_TYPES = {**FLOAT_TYPES, **_INT_TYPES}
# llama.cpp's GGML_MAX_NAME: a tensor name must be shorter (the C buffer holds the final NUL)
GGML_MAX_NAME = 64
GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)        # what gguf-py and llama.cpp read
DEFAULT_ALIGNMENT = 32        # general.alignment when the file does not set it
# Keys the reader synthesises from the file header, not metadata the writer was given.
_HEADER_KEYS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")

# ggml's GGML_QNT_VERSION: the block-format revision llama.cpp records for quantized files.
QUANTIZATION_VERSION = 2

Quantizer = Callable[[np.ndarray, str], np.ndarray]


def _ggml_type(name: str):
    import gguf

    try:
        return gguf.GGMLQuantizationType[name.upper()]
    except KeyError:
        raise ValueError(
            f"unknown ggml type {name!r}: expected one of {', '.join(t.name for t in gguf.GGMLQuantizationType)}"
        ) from None


def default_quantizer() -> Quantizer:
    """The quantizer used for float tensors given a quantized type: ``qlearn.kquants.quantize``
    (every type, bit for bit with ggml)."""
    from qlearn.kquants import quantize as kq

    return lambda x, qtype: kq(x, qtype)


def _metadata_value(key: str, value: Any):
    """(value, GGUFValueType) for one metadata entry. Python ints become UINT32 when they fit
    (llama.cpp's counts and ids are uint32), else INT64; floats FLOAT32; a ``(value, type)``
    tuple forces the type."""
    import gguf

    T = gguf.GGUFValueType
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], T):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value), T.BOOL
    np_types = {np.uint8: T.UINT8, np.int8: T.INT8, np.uint16: T.UINT16, np.int16: T.INT16,
                np.uint32: T.UINT32, np.int32: T.INT32, np.uint64: T.UINT64, np.int64: T.INT64,
                np.float32: T.FLOAT32, np.float64: T.FLOAT64}
    for np_t, vt in np_types.items():
        if isinstance(value, np_t):
            return value.item(), vt
    if isinstance(value, int):
        return value, (T.UINT32 if 0 <= value < 2**32 else T.INT64)
    if isinstance(value, float):
        return value, T.FLOAT32
    if isinstance(value, str):
        return value, T.STRING
    if isinstance(value, (list, np.ndarray)):
        items = list(value.tolist() if isinstance(value, np.ndarray) else value)
        if not items:
            raise ValueError(f"metadata {key!r}: empty arrays have no element type; give (value, GGUFValueType)")
        return items, T.ARRAY
    raise ValueError(
        f"metadata {key!r}: unsupported value type {type(value).__name__} "
        "(use bool, int, float, str, a list of those, a numpy scalar, or (value, gguf.GGUFValueType))"
    )


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
    n = len(name.encode("utf-8"))
    if n >= GGML_MAX_NAME:
        raise ValueError(f"tensor name {name[:20]!r}... is {n} bytes: llama.cpp reads names of "
                         f"at most {GGML_MAX_NAME - 1} bytes (GGML_MAX_NAME = {GGML_MAX_NAME})")


def _check_fits(name: str, data: np.ndarray, qtype: str, target: np.dtype) -> None:
    """Refuse values the stored type would change: integer overflow, fractions, float overflow."""
    if target.kind in "iu":
        info = np.iinfo(target)
        if data.dtype.kind == "f" and (data != np.round(data)).any():
            raise ValueError(f"tensor {name!r}: type {qtype} stores integers, got fractional "
                             f"values (round them or pick a float type)")
        lo, hi = data.min(), data.max()
        if lo < info.min or hi > info.max:
            raise ValueError(f"tensor {name!r}: values {lo}..{hi} overflow {qtype} "
                             f"({info.min}..{info.max}); pick a wider integer type")
    elif data.dtype.kind == "f" or data.dtype.kind in "iu":
        big = float(np.abs(data.astype(np.float64)).max())
        if big > float(np.finfo(target).max):
            raise ValueError(f"tensor {name!r}: |value| {big:g} overflows {qtype} (max "
                             f"{float(np.finfo(target).max):g}); use F32")


def _tensor_payload(name: str, entry, quantizer: Quantizer | None):
    """Return (array to hand to GGUFWriter, raw ggml type or None) for one tensors entry."""
    from qlearn import kernels

    _check_name(name)
    if not isinstance(entry, tuple) or len(entry) not in (2, 3):
        raise ValueError(f"tensor {name!r}: expected (array_or_bytes, qtype) or (bytes, qtype, shape), got {type(entry).__name__}")
    data, qtype = entry[0], str(getattr(entry[1], "name", entry[1])).upper()
    shape = tuple(entry[2]) if len(entry) == 3 else None
    ggml_t = _ggml_type(qtype)
    if isinstance(data, (bytes, bytearray, memoryview)):
        if shape is None:
            raise ValueError(f"tensor {name!r}: raw bytes need a shape, pass (bytes, {qtype!r}, (rows, cols))")
        data = np.frombuffer(data, dtype=np.uint8)
    if not isinstance(data, np.ndarray):
        raise ValueError(f"tensor {name!r}: expected a numpy array or bytes, got {type(data).__name__}")

    if data.dtype.kind not in "fiub":
        raise ValueError(f"tensor {name!r}: expected real numbers, got dtype {data.dtype} "
                         f"(complex values have no ggml type; store real and imaginary parts "
                         f"as two tensors)")
    if data.size == 0:
        raise ValueError(f"tensor {name!r} is empty (shape {data.shape}): ggml tensors need "
                         f"at least one element")
    if qtype in _PLAIN_TYPES:
        if data.dtype == np.uint8 and qtype != "I8":
            raise ValueError(f"tensor {name!r}: type {qtype} takes numbers, got uint8 bytes")
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise ValueError(f"tensor {name!r} contains NaN or Inf")
        target = np.dtype(_PLAIN_TYPES[qtype])
        _check_fits(name, data, qtype, target)
        arr = np.ascontiguousarray(data, dtype=target)
        return (arr.reshape(shape) if shape else arr), None

    bs, ts = kernels.block_info(qtype)  # raises for types qlearn cannot dequantize
    if data.dtype == np.uint8:  # already the block bytes
        if shape is not None:
            rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            if shape[-1] % bs or data.size != rows * shape[-1] // bs * ts:
                raise ValueError(
                    f"tensor {name!r}: shape {shape} as {qtype} needs {rows * (shape[-1] // bs) * ts} bytes "
                    f"(last dim a multiple of {bs}), got {data.size}"
                )
            data = data.reshape(*shape[:-1], shape[-1] // bs * ts)
        if data.shape[-1] % ts:
            raise ValueError(
                f"tensor {name!r}: {qtype} rows must be a multiple of {ts} bytes, got {data.shape[-1]} bytes per row"
            )
        return np.ascontiguousarray(data), ggml_t
    if data.dtype.kind != "f":
        raise ValueError(f"tensor {name!r}: a {qtype} tensor is given as float weights or uint8 block bytes, got {data.dtype}")
    x = np.ascontiguousarray(data, dtype=np.float32)
    if x.shape[-1] % bs:
        raise ValueError(
            f"tensor {name!r}: last dimension {x.shape[-1]} is not a multiple of the {qtype} block size {bs} "
            "(pick a 32-element type or keep this tensor in F16/F32)"
        )
    if not np.isfinite(x).all():
        raise ValueError(f"tensor {name!r} contains NaN or Inf")
    quantize = quantizer or default_quantizer()
    q = np.asarray(quantize(x.reshape(-1, x.shape[-1]), qtype), dtype=np.uint8)
    return q.reshape(*x.shape[:-1], x.shape[-1] // bs * ts), ggml_t


def write_gguf(
    path: str | Path,
    tensors: dict[str, tuple],
    metadata: dict[str, Any] | None = None,
    arch: str = "llama",
    *,
    quantizer: Quantizer | None = None,
) -> Path:
    """Write a GGUF file with one ggml type per tensor.

    tensors: name -> ``(data, qtype)`` or ``(raw_bytes, qtype, shape)``.
        - qtype "F32" / "F16" / "F64" (or I8...I64): data is a numeric array, stored in that type.
        - a quantized qtype ("Q4_K", ...): data is either the block bytes, uint8
          ``(rows, cols // block_size * type_size)`` (stored as is), or float weights
          ``(rows, cols)`` that ``quantizer(x, qtype) -> uint8 bytes`` turns into blocks
          (default: :func:`default_quantizer`).
    metadata: GGUF key -> value (``"llama.block_count": 32``...); see :func:`_metadata_value`
        for the type rules. ``general.architecture`` is set from ``arch``, and
        ``general.quantization_version`` (2) is added when a tensor is quantized.
    Returns the path written.
    """
    import gguf

    path = Path(path)
    if not tensors:
        raise ValueError("tensors is empty: a GGUF model needs at least one tensor")
    payloads = {name: _tensor_payload(name, entry, quantizer) for name, entry in tensors.items()}
    writer = gguf.GGUFWriter(str(path), arch)
    try:
        for key, value in (metadata or {}).items():
            if key == "general.architecture":
                if value != arch:
                    raise ValueError(f"metadata general.architecture={value!r} disagrees with arch={arch!r}")
                continue
            val, vtype = _metadata_value(key, value)
            if vtype == gguf.GGUFValueType.ARRAY:
                writer.add_array(key, val)
            else:
                writer.add_key_value(key, val, vtype)
        quantized = any(raw is not None for _, raw in payloads.values())
        if quantized and "general.quantization_version" not in (metadata or {}):
            writer.add_quantization_version(QUANTIZATION_VERSION)
        for name, (arr, raw_dtype) in payloads.items():
            writer.add_tensor(name, arr, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def read_gguf(path: str | Path) -> tuple[dict[str, tuple[np.ndarray, str, tuple[int, ...]]], dict[str, Any]]:
    """Read a GGUF file into numpy.

    Returns ``(tensors, metadata)``:
    - tensors: name -> ``(data, qtype, shape)``, shape in numpy order ``(rows, cols)``. For
      F32/F16/F64/I* tensors ``data`` is that array with that shape; for quantized types it is
      the uint8 block bytes ``(rows, cols // block_size * type_size)`` (dequantize with
      ``qlearn.kernels.dequantize(data, qtype)``).
    - metadata: key -> Python value (str, int, float, bool or list), header keys left out.
    """
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"expected a GGUF file, got no file at {path} (no GGUF file there)")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise ValueError(f"corrupt GGUF: {path} does not start with the magic {GGUF_MAGIC!r} "
                         f"(got {head[:4]!r}); is it a GGUF file?")
    version = int.from_bytes(head[4:8], "little")
    if version not in GGUF_VERSIONS:
        raise ValueError(f"corrupt GGUF: version {version}, expected one of {GGUF_VERSIONS}")
    try:
        reader = gguf.GGUFReader(str(path))
        metadata = {k: f.contents() for k, f in reader.fields.items() if k not in _HEADER_KEYS}
    except Exception as e:  # gguf raises IndexError, ValueError, struct/reshape errors
        raise ValueError(f"corrupt GGUF: {path} could not be parsed "
                         f"({type(e).__name__}: {e})") from None
    _check_tensor_table(reader, size, metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    tensors = {}
    for t in reader.tensors:
        qtype = t.tensor_type.name
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # GGUF lists innermost first
        data = np.array(t.data)  # copy out of the memory map
        if qtype in _PLAIN_TYPES:
            data = data.reshape(shape)
        tensors[t.name] = (data, qtype, shape)
    return tensors, metadata


def _check_tensor_table(reader, size: int, alignment: Any) -> None:
    """Every tensor's bytes inside the file's data section, aligned, without overlap, and its
    element count a whole number of its type's blocks."""
    import gguf

    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0:
        raise ValueError(f"corrupt GGUF: general.alignment must be a positive int, got "
                         f"{alignment!r}")
    spans = []
    for t in reader.tensors:
        bs, _ = gguf.GGML_QUANT_SIZES[t.tensor_type]
        n_el = int(np.prod(t.shape.astype(np.int64))) if len(t.shape) else 1
        if n_el <= 0 or t.shape[0] % bs:
            raise ValueError(f"corrupt GGUF: tensor {t.name!r} of type {t.tensor_type.name} has "
                             f"shape {t.shape.tolist()}, not a whole number of {bs}-element "
                             f"blocks")
        start, end = int(t.data_offset), int(t.data_offset) + int(t.n_bytes)
        if start % alignment or end > size:
            raise ValueError(f"corrupt GGUF: tensor {t.name!r} ({t.tensor_type.name}, "
                             f"{t.n_bytes} bytes at offset {start}) lies outside the "
                             f"{size}-byte file or is not {alignment}-byte aligned "
                             f"(truncated file or edited header)")
        spans.append((start, end, t.name))
    spans.sort()
    for (s0, e0, n0), (s1, _, n1) in zip(spans, spans[1:]):
        if e0 > s1:
            raise ValueError(f"corrupt GGUF: tensor {n0!r} (bytes {s0}..{e0}) overlaps tensor "
                             f"{n1!r} (from byte {s1}): its declared type or shape does not fit "
                             f"its region")
