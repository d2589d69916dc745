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
# What gguf.quants.quantize reproduces bit for bit (legacy types); it has no k-quant quantizer.
_GGUF_PY_EXACT = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
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
    """The quantizer used for float tensors given a quantized type.

    ``qlearn.kquants.quantize`` when it is available (every type, bit-exact with ggml),
    otherwise ``gguf.quants.quantize``, which is exact only for Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0.
    Imported lazily so this module works with either.
    """
    try:
        from qlearn.kquants import quantize as kq

        return lambda x, qtype: kq(x, qtype)
    except ImportError:
        pass

    def gguf_py(x: np.ndarray, qtype: str) -> np.ndarray:
        import gguf.quants

        if qtype not in _GGUF_PY_EXACT:
            raise ValueError(
                f"no quantizer for {qtype}: qlearn.kquants is not available and gguf.quants only "
                f"quantizes {', '.join(_GGUF_PY_EXACT)} exactly (pass quantizer=..., or give the "
                "tensor as uint8 block bytes)"
            )
        return gguf.quants.quantize(x, _ggml_type(qtype))

    return gguf_py


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


def _tensor_payload(name: str, entry, quantizer: Quantizer | None):
    """Return (array to hand to GGUFWriter, raw ggml type or None) for one tensors entry."""
    from qlearn import kernels

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

    if qtype in _PLAIN_TYPES:
        if data.dtype == np.uint8 and qtype != "I8":
            raise ValueError(f"tensor {name!r}: type {qtype} takes numbers, got uint8 bytes")
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise ValueError(f"tensor {name!r} contains NaN or Inf")
        arr = np.ascontiguousarray(data, dtype=_PLAIN_TYPES[qtype])
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
    if not path.exists():
        raise ValueError(f"no GGUF file at {path}")
    reader = gguf.GGUFReader(str(path))
    metadata = {k: f.contents() for k, f in reader.fields.items() if k not in _HEADER_KEYS}
    tensors = {}
    for t in reader.tensors:
        qtype = t.tensor_type.name
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # GGUF lists innermost first
        data = np.array(t.data)  # copy out of the memory map
        if qtype in _PLAIN_TYPES:
            data = data.reshape(shape)
        tensors[t.name] = (data, qtype, shape)
    return tensors, metadata
