"""Float zero points (HQQ's, QAD's) in ONNX artifacts: no MatMulNBits gets them (ONNX Runtime's int8
CPU kernels and CUDA's fused GEMV take integer zero points only), and a term beside each one, x's
sums over each group @ C, C = ((m - z) * s)^T, restores them exactly."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from helpers import rel_err

from edgekit.artifact import ALL_LOGITS_FILE, MODEL_FILE
from edgekit.exporters.onnx import write_onnx
from edgekit.exporters.onnx_decoder import OnnxOptions
from edgekit.exporters.pipeline import export
from edgekit.exporters.verify import run_greedy
from edgekit.quant.hqq import quantize_hqq
from edgekit.quant.packing import group_indicator, zero_point_table
from edgekit.quant.pipeline import quantize_checkpoint
from edgekit.quant.recipe import Recipe
from edgekit.quant.tensor import QuantizedTensor, fp16
from edgekit.reference import ReferenceModel
from edgekit.runtimes.onnx import OnnxRuntime
from edgekit.sources import open_checkpoint
from edgekit.testing import FAMILY_CASES, write_tiny_checkpoint

onnx = pytest.importorskip("onnx")

PROMPT = [int(i) for i in np.random.default_rng(5).integers(3, 380, 20)]
# every weight HQQ with float zero points: the blocks, the 4-bit embedding and the lm_head
HQQ = Recipe(algorithm="hqq", group_size=32, embedding_bits=4, lm_head_bits=4, edge_down_bits=None)
CASES = {
    "llama": {},
    "llama-tied": {"tie_word_embeddings": True},
    "qwen2-qkv-bias": {},
    "qwen3-head-norms": {},
    "phi3-fused-projections": FAMILY_CASES["phi3-partial-rotary"],
    # K not a multiple of 16: down_proj's last group is padded (and the group sums pad x)
    "llama-padded-groups": {"intermediate_size": 200},
}


def matmulnbits_zero_points(path) -> dict[str, int | None]:
    """Each MatMulNBits node -> the element type of its zero_points input (None: no zero points;
    0: made by a node, not an initializer)."""
    model = onnx.load(str(path), load_external_data=False)
    types = {i.name: i.data_type for i in model.graph.initializer}
    return {
        n.name: (types.get(n.input[3], 0) if len(n.input) > 3 and n.input[3] else None)
        for n in model.graph.node
        if n.op_type == "MatMulNBits"
    }


def op_names(path, op_type: str) -> list[str]:
    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == op_type]


def without_zero_point_term(qm) -> dict[str, np.ndarray]:
    """The weights a graph that dropped the term would hold: every zero point m = 2**(bits - 1)."""
    weights = dict(qm.weights())
    for name, qt in qm.quantized.items():
        weights[name] = replace(qt, zeros=None).dequantize()
    return weights


def quantized(tmp_path, case: str):
    family = case.split("-")[0]
    checkpoint = open_checkpoint(write_tiny_checkpoint(tmp_path / "hf", family, **CASES[case]))
    qm = quantize_checkpoint(checkpoint, HQQ)
    assert all(qt.zeros is not None and not qt.integer_zeros for qt in qm.quantized.values())
    return checkpoint, qm


def test_the_split_is_the_same_weight():
    w = np.random.default_rng(0).normal(size=(24, 72)).astype(np.float32)  # 72: the last group padded
    qt = quantize_hqq(w, 4, 32, False)
    assert not qt.integer_zeros and np.array_equal(fp16(qt.zeros), qt.zeros)
    table = zero_point_table(qt)  # [groups, N]
    assert table.shape == (qt.n_groups, 24) and table.dtype == np.float32
    without = replace(qt, zeros=None).dequantize()  # (q - 8) * s: what MatMulNBits without zero points holds
    x = np.random.default_rng(1).normal(size=(5, 72)).astype(np.float32)
    sums = x @ group_indicator(72, qt.n_groups, 32)
    np.testing.assert_allclose(sums, np.pad(x, ((0, 0), (0, 24))).reshape(5, 3, 32).sum(-1), rtol=1e-6)
    np.testing.assert_allclose(x @ without.T + sums @ table, x @ qt.dequantize().T, rtol=1e-5, atol=1e-5)
    # C is exact where |z| >= 1 ((m - z) has at most 13 significant bits, s 11), else one rounding
    exact = (8 - qt.zeros.astype(np.float64)) * qt.scales.astype(np.float64)
    whole = np.abs(qt.zeros) >= 1
    assert whole.mean() > 0.9 and np.array_equal(table.T[whole].astype(np.float64), exact[whole])
    np.testing.assert_allclose(table.T, exact, rtol=2**-24)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hqq_graph_has_no_float_zero_points_and_matches_the_reference(tmp_path, case):
    checkpoint, qm = quantized(tmp_path, case)
    write_onnx(tmp_path, checkpoint, qm, OnnxOptions(max_context=64, accuracy_level=0))
    nodes = matmulnbits_zero_points(tmp_path / MODEL_FILE)
    assert nodes and set(nodes.values()) == {None}, nodes
    terms = [n for n in op_names(tmp_path / MODEL_FILE, "Add") if n.endswith("/zero_point_term/Add")]
    assert len(terms) == len(nodes)  # one term per MatMulNBits, lm_head included
    assert "/lm_head/MatMul/zero_point_term/Add" in terms
    assert "/model/layers.1/mlp/down_proj/MatMul/group_sums/ReduceSum" in op_names(tmp_path / MODEL_FILE, "ReduceSum")

    runtime = OnnxRuntime(tmp_path / MODEL_FILE, checkpoint.spec, 64)
    ids, got = run_greedy(runtime, PROMPT, 16)  # the prompt, then 16 cached decode steps
    reference = ReferenceModel(checkpoint.spec, qm.weights())
    expected = reference.forward(ids)[len(PROMPT) - 1 :]
    assert rel_err(got, expected) < 1e-4
    everything = OnnxRuntime(tmp_path / ALL_LOGITS_FILE, checkpoint.spec, 64).logits_all(PROMPT)
    assert rel_err(everything, reference.forward(PROMPT)) < 1e-4
    # the term matters: without it the logits would be far outside the tolerance above
    dropped = ReferenceModel(checkpoint.spec, without_zero_point_term(qm)).forward(ids)[len(PROMPT) - 1 :]
    assert rel_err(dropped, expected) > 1e-2


def test_int8_kernels_run_hqq_as_closely_as_rtn(tmp_path):
    """accuracy_level 4, what artifacts ship with: the int8 path now runs every HQQ weight, and its
    error against the reference is int8 rounding's, about what RTN's integer zero points get."""
    errors = {}
    for algorithm in ("rtn", "hqq"):
        folder = tmp_path / algorithm
        checkpoint = open_checkpoint(write_tiny_checkpoint(folder / "hf", "llama"))
        qm = quantize_checkpoint(checkpoint, replace(HQQ, algorithm=algorithm))
        write_onnx(folder, checkpoint, qm, OnnxOptions(max_context=64, accuracy_level=4))
        ids, got = run_greedy(OnnxRuntime(folder / MODEL_FILE, checkpoint.spec, 64), PROMPT, 8)
        expected = ReferenceModel(checkpoint.spec, qm.weights()).forward(ids)[len(PROMPT) - 1 :]
        errors[algorithm] = rel_err(got, expected)
        assert np.array_equal(got.argmax(-1), expected.argmax(-1))
    assert set(matmulnbits_zero_points(tmp_path / "hqq" / MODEL_FILE).values()) == {None}
    assert errors["hqq"] < 3 * errors["rtn"] + 1e-3, errors


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_cuda_flavor_float16_graph(tmp_path, tied):
    """The cuda flavor's float16 graph, run by ONNX Runtime's CPU kernels (no GPU here): C is
    rounded once to float16, the term added in float16; float16's error, not a missing term's."""
    checkpoint = open_checkpoint(write_tiny_checkpoint(tmp_path / "hf", "llama", tie_word_embeddings=tied))
    qm = quantize_checkpoint(checkpoint, HQQ)
    write_onnx(tmp_path, checkpoint, qm, OnnxOptions(flavor="cuda", max_context=64, accuracy_level=0))
    assert set(matmulnbits_zero_points(tmp_path / MODEL_FILE).values()) == {None}
    runtime = OnnxRuntime(tmp_path / MODEL_FILE, checkpoint.spec, 64, kv_dtype=np.float16)
    ids, got = run_greedy(runtime, PROMPT, 8)
    expected = ReferenceModel(checkpoint.spec, qm.weights()).forward(ids)[len(PROMPT) - 1 :]
    assert rel_err(got, expected) < 5e-3
    dropped = ReferenceModel(checkpoint.spec, without_zero_point_term(qm)).forward(ids)[len(PROMPT) - 1 :]
    assert rel_err(dropped, expected) > 2e-2


def test_hqq_export_verifies_without_a_speed_notice(tiny_models, tmp_path):
    notes: list[str] = []
    result = export(tiny_models["llama"], tmp_path / "hqq", recipe=HQQ, stage=notes.append)
    assert result.verify["checked"] and result.verify["max_rel_error"] < 1e-4
    assert not any("zero point" in n for n in notes), notes
    assert set(matmulnbits_zero_points(tmp_path / "hqq" / MODEL_FILE).values()) == {None}
    # the embedding's float zero points are stored as float16, cast once at load (no float32 copy)
    model = onnx.load(str(tmp_path / "hqq" / MODEL_FILE), load_external_data=False)
    stored = {i.name for i in model.graph.initializer}
    assert "model.embed_tokens.weight.qzeros" in stored and "model.embed_tokens.weight.zeros2d" not in stored


def test_optimum_rewrite_splits_float_zero_points(tmp_path):
    """The generic path's MatMul (3-D input) and Gemm (2-D, bias) weights, K not a multiple of 16."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.exporters.optimum import dequantized_copy, quantize_graph

    rng = np.random.default_rng(2)
    w1 = rng.normal(size=(72, 40)).astype(np.float32)  # MatMul: [K, N]
    w2 = rng.normal(size=(24, 40)).astype(np.float32)  # Gemm transB: [N, K]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="/mm"),
        helper.make_node("Reshape", ["h", "flat"], ["h2"], name="/flat"),
        helper.make_node("Gemm", ["h2", "w2", "b2"], ["y"], name="/gemm", transB=1),
    ]
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(rng.normal(size=24).astype(np.float32), "b2"),
        numpy_helper.from_array(np.array([-1, 40], np.int64), "flat"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "s", 72])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 24])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    quantized_model, records, tensors = quantize_graph(model, Recipe(algorithm="hqq", group_size=32), accuracy_level=0)
    assert all(not qt.integer_zeros for qt in tensors.values())
    path = tmp_path / "q.onnx"
    onnx.save(quantized_model, str(path))
    assert set(matmulnbits_zero_points(path).values()) == {None}
    x = rng.normal(size=(1, 5, 72)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    want = run(dequantized_copy(model, tensors, records))
    assert rel_err(run(quantized_model), want) < 1e-5
    dropped = {name: replace(qt, zeros=None) for name, qt in tensors.items()}
    assert rel_err(run(dequantized_copy(model, dropped, records)), want) > 1e-2


def test_qad_zero_points_come_back_as_float16_values():
    """QAD trains float zero points in float32; artifacts store float16, so the trained model's
    weights are rounded to what the artifact holds (the export's verify then checks those)."""
    torch = pytest.importorskip("torch")
    from edgekit.distill.torch_model import QuantizedWeight

    qt = quantize_hqq(np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32), 4, 32)
    module = QuantizedWeight(qt)
    step = np.random.default_rng(1).uniform(0.01, 0.02, qt.zeros.shape).astype(np.float32)
    with torch.no_grad():
        module.zeros.add_(torch.from_numpy(step))  # trained, off the float16 grid
    trained = module.zeros.detach().numpy().copy()
    assert not np.array_equal(fp16(trained), trained)
    back: QuantizedTensor = module.to_quantized()
    assert np.array_equal(back.zeros, fp16(trained))
