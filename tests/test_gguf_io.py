"""qlearn.gguf_io: GGUF files written by qlearn are what gguf.GGUFReader and llama.cpp expect."""

from pathlib import Path

import gguf
import numpy as np
import pytest

from qlearn import gguf_io, kernels

DATA = Path(__file__).parent / "data" / "kquants"


def _tensors():
    """One tensor per supported quantized type (ggml's own bytes from the oracle files),
    plus float tensors and a float tensor quantized on write."""
    rng = np.random.default_rng(0)
    tensors = {}
    for t in kernels.SUPPORTED:
        z = np.load(DATA / f"{t}.npz")
        tensors[f"blk.0.{t.lower()}.weight"] = (z["outliers__q_ref"], t)
    tensors["token_embd.weight"] = (rng.standard_normal((64, 128)).astype(np.float32), "Q8_0")
    tensors["blk.0.attn_norm.weight"] = (rng.standard_normal(128).astype(np.float32), "F32")
    tensors["blk.0.ffn_up.weight"] = (rng.standard_normal((3, 128)).astype(np.float32), "F16")
    return tensors


METADATA = {
    "general.name": "qlearn-test",
    "llama.block_count": 1,
    "llama.context_length": 4096,
    "llama.rope.freq_base": 10000.0,
    "llama.attention.layer_norm_rms_epsilon": np.float32(1e-5),
    "general.file_type": np.uint32(15),
    "tokenizer.ggml.tokens": ["<s>", "</s>", "hello"],
    "tokenizer.ggml.scores": [0.0, -1.5, -2.0],
    "tokenizer.ggml.add_bos_token": True,
    "qlearn.signed": -3,
}


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "model.gguf"
    gguf_io.write_gguf(path, _tensors(), METADATA, arch="llama")
    return path


def test_gguf_reader_sees_same_types_shapes_bytes(gguf_file):
    tensors = _tensors()
    reader = gguf.GGUFReader(str(gguf_file))
    assert [t.name for t in reader.tensors] == list(tensors)
    for t in reader.tensors:
        data, qtype = tensors[t.name]
        assert t.tensor_type.name == qtype
        if qtype in kernels.SUPPORTED and data.dtype == np.uint8:
            bs, ts = kernels.block_info(qtype)
            rows, cols = data.shape[0], data.shape[1] // ts * bs
            assert list(t.shape) == [cols, rows]  # GGUF lists the innermost dimension first
            assert np.array_equal(np.asarray(t.data), data)  # the very same block bytes
            want = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
            got = kernels.dequantize(np.asarray(t.data), qtype)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
        elif qtype == "Q8_0":  # float input, quantized on write by the default quantizer
            expect = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            assert np.array_equal(np.asarray(t.data), expect)
            assert list(t.shape) == [data.shape[1], data.shape[0]]
        else:
            assert list(t.shape) == list(reversed(data.shape))
            np.testing.assert_array_equal(np.asarray(t.data).reshape(data.shape), data.astype(t.data.dtype))


def test_metadata_types_in_file(gguf_file):
    reader = gguf.GGUFReader(str(gguf_file))
    T = gguf.GGUFValueType
    types = {k: f.types for k, f in reader.fields.items()}
    assert types["general.architecture"] == [T.STRING]
    assert types["llama.block_count"] == [T.UINT32]
    assert types["llama.rope.freq_base"] == [T.FLOAT32]
    assert types["general.file_type"] == [T.UINT32]
    assert types["tokenizer.ggml.tokens"] == [T.ARRAY, T.STRING]
    assert types["tokenizer.ggml.add_bos_token"] == [T.BOOL]
    assert types["qlearn.signed"] == [T.INT64]
    assert reader.fields["general.quantization_version"].contents() == 2


def test_read_gguf_round_trip(gguf_file):
    tensors, metadata = gguf_io.read_gguf(gguf_file)
    src = _tensors()
    assert list(tensors) == list(src)
    for name, (data, qtype, shape) in tensors.items():
        arr, want_type = src[name]
        assert qtype == want_type
        if want_type in ("F32", "F16"):
            assert shape == arr.shape
            np.testing.assert_array_equal(data, arr.astype(data.dtype))
        else:
            bs, ts = kernels.block_info(qtype)
            assert data.dtype == np.uint8 and shape == (data.shape[0], data.shape[1] // ts * bs)
            if arr.dtype == np.uint8:
                assert np.array_equal(data, arr)
    assert metadata["general.architecture"] == "llama"
    assert metadata["general.name"] == "qlearn-test"
    assert metadata["llama.block_count"] == 1
    assert metadata["tokenizer.ggml.tokens"] == ["<s>", "</s>", "hello"]
    assert metadata["tokenizer.ggml.scores"] == [0.0, -1.5, -2.0]
    assert metadata["tokenizer.ggml.add_bos_token"] is True
    assert metadata["qlearn.signed"] == -3
    assert "GGUF.version" not in metadata


def test_custom_quantizer_and_raw_bytes_with_shape(tmp_path):
    calls = []

    def fake_quantizer(x, qtype):
        calls.append((x.shape, qtype))
        return gguf.quants.quantize(x, gguf.GGMLQuantizationType[qtype])

    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    raw = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q4_0)
    path = gguf_io.write_gguf(
        tmp_path / "m.gguf",
        {"a.weight": (x, "Q5_1"), "b.weight": (raw.tobytes(), "Q4_0", (4, 64))},
        {}, quantizer=fake_quantizer,
    )
    assert calls == [((4, 64), "Q5_1")]
    tensors, _ = gguf_io.read_gguf(path)
    assert tensors["b.weight"][2] == (4, 64) and np.array_equal(tensors["b.weight"][0], raw)
    np.testing.assert_allclose(kernels.dequantize(tensors["a.weight"][0], "Q5_1"), x, atol=0.1)


@pytest.mark.parametrize(
    "tensors,match",
    [
        ({}, "tensors is empty"),
        ({"w": (np.zeros((2, 100), np.uint8), "Q4_K")}, "multiple of 144 bytes"),
        ({"w": (np.zeros((2, 100), np.float32), "Q4_0")}, "not a multiple of the Q4_0 block size 32"),
        ({"w": (np.full((2, 32), np.nan, np.float32), "Q8_0")}, "NaN or Inf"),
        ({"w": (np.full(4, np.inf, np.float32), "F32")}, "NaN or Inf"),
        ({"w": (np.zeros((2, 32), np.float32), "Q9_9")}, "unknown ggml type"),
        ({"w": (np.zeros((2, 32), np.int32), "Q8_0")}, "float weights or uint8 block bytes"),
        ({"w": (b"\x00" * 34, "Q8_0")}, "raw bytes need a shape"),
        ({"w": (b"\x00" * 34, "Q8_0", (2, 32))}, "needs 68 bytes"),
        ({"w": np.zeros(3)}, "expected"),
    ],
)
def test_write_gguf_bad_input(tmp_path, tensors, match):
    with pytest.raises(ValueError, match=match):
        gguf_io.write_gguf(tmp_path / "bad.gguf", tensors, {})


def test_bad_metadata_and_missing_file(tmp_path):
    t = {"w": (np.zeros(4, np.float32), "F32")}
    with pytest.raises(ValueError, match="unsupported value type"):
        gguf_io.write_gguf(tmp_path / "m.gguf", t, {"x": {"nested": 1}})
    with pytest.raises(ValueError, match="disagrees with arch"):
        gguf_io.write_gguf(tmp_path / "m.gguf", t, {"general.architecture": "gpt2"}, arch="llama")
    with pytest.raises(ValueError, match="no GGUF file"):
        gguf_io.read_gguf(tmp_path / "missing.gguf")
