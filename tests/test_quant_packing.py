"""Packed weights reproduce the neutral dequantization bit for bit in the consumers themselves:
ONNX Runtime's MatMulNBits kernel and mlx.core.dequantize."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from edgekit.quant import packing
from edgekit.quant.hqq import quantize_hqq
from edgekit.quant.packing import pack_low_first, pack_words, to_matmulnbits, to_mlx, unpack_low_first, unpack_words
from edgekit.quant.rtn import quantize_rtn
from edgekit.quant.tensor import layer_group

SHAPES = [(7, 64), (33, 256), (5, 96), (3, 200)]  # odd N; K = 96 and 200 are not multiples of 64/128


def weights(n, k, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
    w[:, 1] *= 20  # an outlier input channel
    return w


def test_pack_unpack_round_trip():
    codes = np.random.default_rng(0).integers(0, 16, (3, 64)).astype(np.uint8)
    assert np.array_equal(unpack_low_first(pack_low_first(codes, 4), 4, 64), codes)
    assert pack_low_first(np.array([[1, 2]], np.uint8), 4)[0, 0] == 0x21  # low nibble first


def run_matmulnbits(qt, scale_dtype=np.float32):
    pytest.importorskip("onnx")
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    packed = to_matmulnbits(qt, scale_dtype)
    inits = [numpy_helper.from_array(packed.B, "B"), numpy_helper.from_array(packed.scales, "scales")]
    inputs = ["A", "B", "scales"]
    if packed.zero_points is not None:
        inits.append(numpy_helper.from_array(packed.zero_points, "zp"))
        inputs.append("zp")
    node = helper.make_node(
        "MatMulNBits",
        inputs,
        ["Y"],
        domain="com.microsoft",
        K=packed.K,
        N=packed.N,
        bits=packed.bits,
        block_size=packed.block_size,
        accuracy_level=0,
    )
    elem = TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("A", elem, [None, packed.K])],
        [helper.make_tensor_value_info("Y", elem, [None, packed.N])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    eye = np.eye(packed.K, dtype=np.float32)
    return session.run(None, {"A": eye})[0].T  # A = I  ->  Y = W^T


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [4, 8])
def test_matmulnbits_kernel_reproduces_dequantize(shape, group, symmetric, bits):
    qt = quantize_rtn(weights(*shape), bits, group, symmetric)  # K not divisible: last block padded
    assert np.array_equal(run_matmulnbits(qt), qt.dequantize())


def test_matmulnbits_float_zero_points_from_hqq():
    qt = quantize_hqq(weights(9, 128), 4, 32)
    assert not qt.integer_zeros
    np.testing.assert_allclose(run_matmulnbits(qt), qt.dequantize(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [4, 5, 6, 8])
def test_mlx_dequantize_reproduces_dequantize(shape, group, symmetric, bits):
    mx = pytest.importorskip("mlx.core")
    n, k = shape
    g = layer_group(k, group, whole=True)  # MLX needs groups that divide K: the per-layer fallback
    if k % g:  # no supported group divides K: MLX cannot take it, and says so
        with pytest.raises(EdgekitError, match="multiple of the group size"):
            to_mlx(quantize_rtn(weights(*shape), bits, g, symmetric))
        return
    qt = quantize_rtn(weights(*shape), bits, g, symmetric)
    packed = to_mlx(qt, np.float32)
    got = mx.dequantize(
        mx.array(packed.weight),
        mx.array(packed.scales),
        mx.array(packed.biases),
        group_size=packed.group_size,
        bits=packed.bits,
    )
    assert np.array_equal(np.array(got), qt.dequantize())


def test_mlx_packing_matches_mlx_own_layout():
    """Codes packed by us equal the ones mlx.core.quantize stores for the same codes."""
    mx = pytest.importorskip("mlx.core")
    qt = quantize_rtn(weights(4, 64), 4, 32)
    packed = to_mlx(qt, np.float32)
    # feed our dequantized weights to MLX's own quantizer: it finds the same grid (asymmetric, 4-bit)
    w_mx, s_mx, b_mx = mx.quantize(mx.array(qt.dequantize()), group_size=32, bits=4)
    back = np.array(mx.dequantize(w_mx, s_mx, b_mx, group_size=32, bits=4))
    np.testing.assert_allclose(back, qt.dequantize(), atol=1e-5)
    assert packed.weight.shape == tuple(w_mx.shape) and packed.weight.dtype == np.uint32


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_packed_words_are_mlx_own(bits, monkeypatch):
    """pack_words lays codes of every width MLX reads as mlx.core.quantize does (a 5-bit code
    straddling two words included), in row blocks smaller than the tensor, and unpack_words undoes it."""
    mx = pytest.importorskip("mlx.core")
    monkeypatch.setattr(packing, "STREAM_ROWS", 5)
    w = np.random.default_rng(bits).standard_normal((12, 128)).astype(np.float32)
    words, scales, biases = (np.array(a) for a in mx.quantize(mx.array(w), group_size=64, bits=bits))
    restored = np.array(mx.dequantize(mx.array(words), mx.array(scales), mx.array(biases), group_size=64, bits=bits))
    codes = np.rint((restored.reshape(12, 2, 64) - biases[..., None]) / scales[..., None]).reshape(12, 128)
    codes = codes.astype(np.uint8)
    assert codes.max() == 2**bits - 1  # every bit of the width is exercised
    assert np.array_equal(pack_words(codes, bits), words)
    assert np.array_equal(unpack_words(words, bits), codes)
