"""The generic ONNX path: optimum exports any architecture transformers knows (text generation with
a KV cache), then every MatMul/Gemm with a constant weight becomes an INT4 `MatMulNBits` quantized
by edgekit's own quantizers, and the folder gets the same artifact layout as the native path.

Unlike the native builder this path holds the whole fp32 model in memory (optimum exports through
torch), and its graph runs on ONNX Runtime's generic kernels: it exists for reach, not speed."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import MODEL_FILE, ExportResult, Manifest, QuantizationRecord, SourceRecord, folder_megabytes, staging
from ..errors import EdgekitError, SourceError, require
from ..quant.recipe import Recipe, TensorRecipe
from ..quant.tensor import QuantizedTensor
from ..sources.hf import read_json, read_tokenizer_files
from ..spec import id_tuple

ALGORITHMS = ("rtn", "hqq", "gptq")
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
VERIFY_STEPS = 4


@dataclass
class ConstantWeight:
    """A MatMul or Gemm whose weight is an initializer: y = x @ w.T (+ bias), w as [N, K]."""

    node: Any
    initializer: str
    transposed: bool  # stored as [K, N] (MatMul, Gemm without transB)
    bias: str | None = None


def export_via_optimum(
    source: str | Path,
    output: str | Path,
    *,
    recipe: Recipe,
    calibration: str | Path | None = None,
    max_context: int | None = None,
    accuracy_level: int = 4,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    stage: Callable[[str], None] | None = None,
) -> ExportResult:
    exporters = require("optimum.exporters.onnx", "optimum")
    onnx = require("onnx", "export")
    note = stage or (lambda message: None)
    if recipe.algorithm not in ALGORITHMS:
        raise EdgekitError(
            f"algorithm '{recipe.algorithm}' is not available through optimum (AWQ folds its scales into "
            f"the norms of the families the native builder knows); use one of {', '.join(ALGORITHMS)}"
        )
    if recipe.algorithm == "gptq" and calibration is None:
        raise EdgekitError("gptq through optimum needs calibration text: pass --calibration FILE (or use hqq)")
    start = time.perf_counter()
    output = Path(output)
    if output.exists() and not overwrite:
        raise EdgekitError(f"{output} already exists; choose another output folder or pass --overwrite")
    output.parent.mkdir(parents=True, exist_ok=True)
    with staging(output, overwrite) as folder:
        work = folder / ".optimum"
        hf_folder = _hf_folder(Path(source), work / "source")
        config = read_json(hf_folder / "config.json")
        tokenizer = read_tokenizer_files(hf_folder)
        context = _context(config, max_context, hf_folder)
        note(f"exporting {config.get('model_type')} with optimum (torch, fp32)")
        try:
            exporters.main_export(
                str(hf_folder),
                output=work / "fp32",
                task="text-generation-with-past",
                device="cpu",
                do_validation=False,
            )
        except Exception as exc:  # optimum's own errors name the architecture
            raise EdgekitError(f"optimum cannot export {source}: {str(exc).splitlines()[0]}") from None
        model = onnx.load(str(work / "fp32" / MODEL_FILE))
        hessians = None
        if recipe.algorithm == "gptq":
            note(f"collecting calibration activations from {calibration}")
            hessians = collect_hessians(model, work, _calibration_ids(tokenizer, calibration, recipe))
        note(f"quantizing: {recipe.algorithm} {recipe.bits}-bit g{recipe.group_size}")
        quantized, records, tensors = quantize_graph(model, recipe, accuracy_level, hessians, progress)
        note("verifying against the fp32 graph with the same dequantized weights")
        result = verify_against_dequantized(model, quantized, tensors, records, work, tokenizer)
        shutil.rmtree(work)
        _save(quantized, folder / MODEL_FILE)  # last: saving moves the model's tensors out to the file
        tokenizer.write(folder)
        weight_bytes = sum(r["bytes"] for r in records.values())
        bits_per_weight = 8 * weight_bytes / max(1, sum(r["parameters"] for r in records.values()))
        eos = id_tuple(tokenizer.generation_config.get("eos_token_id")) or id_tuple(config.get("eos_token_id"))
        Manifest(
            format="onnx",
            flavor="cpu",
            max_context=context,
            source=SourceRecord(str(source), "hf", Path(str(source)).name),
            quantization=QuantizationRecord(recipe.to_dict(), records, bits_per_weight, weight_bytes),
            verify=result,
            graph="optimum",
            accuracy_level=accuracy_level,
            eos_token_ids=tuple(eos),
            model_type=config.get("model_type"),
            vocab_size=int(config.get("vocab_size") or len(tokenizer.load().get_vocab())),
        ).write(folder)
        megabytes = folder_megabytes(folder)
    return ExportResult(output, time.perf_counter() - start, megabytes, bits_per_weight, result)


def _hf_folder(source: Path, scratch: Path) -> Path:
    """optimum reads HF folders; a GGUF file or a hub id is turned into one first."""
    if source.is_dir():
        if not (source / "config.json").is_file():
            raise SourceError(f"{source}: no config.json; pass a Hugging Face model folder")
        return source
    from ..sources import open_checkpoint
    from ..sources.hf_writer import save_hf_folder

    return save_hf_folder(open_checkpoint(source), scratch)


def _context(config: dict[str, Any], asked: int | None, where: Path) -> int:
    model_context = next((config[k] for k in CONTEXT_KEYS if isinstance(config.get(k), int)), None)
    if model_context is None and asked is None:
        raise EdgekitError(f"{where}/config.json names no context length; pass --max-context")
    return min(asked or model_context, model_context or asked)  # type: ignore[type-var]


def _calibration_ids(tokenizer: Any, path: str | Path, recipe: Recipe) -> list[list[int]]:
    text = Path(path).read_text(encoding="utf-8")
    ids = tokenizer.load().encode(text).ids
    window = recipe.calibration_window
    windows = [ids[i : i + window] for i in range(0, len(ids) - window + 1, window)][: recipe.calibration_samples]
    if not windows:
        raise EdgekitError(f"{path}: too short for one calibration window of {window} tokens")
    return windows


# --- the graph rewrite ---


def constant_weights(model: Any) -> Iterator[ConstantWeight]:
    from onnx import helper

    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
            yield ConstantWeight(node, node.input[1], transposed=True)
        elif node.op_type == "Gemm" and node.input[1] in inits:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                continue
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            yield ConstantWeight(node, node.input[1], transposed=not attrs.get("transB", 0), bias=bias)


def _is_lm_head(weight: ConstantWeight) -> bool:
    return "logits" in weight.node.output or weight.initializer == "lm_head.weight"


def _tensor_recipe(recipe: Recipe, lm_head: bool) -> TensorRecipe:
    bits = (recipe.lm_head_bits or recipe.bits) if lm_head else recipe.bits
    return TensorRecipe(bits, recipe.group_size, recipe.algorithm, recipe.symmetric, recipe.whole_groups)


def quantize_graph(
    model: Any,
    recipe: Recipe,
    accuracy_level: int,
    hessians: dict[str, np.ndarray] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[Any, dict[str, dict[str, Any]], dict[str, QuantizedTensor]]:
    """A copy of `model` with each constant-weight MatMul/Gemm replaced by MatMulNBits (+ Add for a
    Gemm's bias). Returns it, per replaced node what was done, and per weight its quantization."""
    import onnx
    from onnx import helper, numpy_helper

    from ..quant.packing import group_indicator, to_matmulnbits, zero_point_table
    from ..quant.pipeline import quantize_tensor

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    weights = list(constant_weights(out))
    done: dict[str, tuple[QuantizedTensor, list[str]]] = {}  # initializer -> (tensor, packed names)
    terms: dict[str, tuple[str, str]] = {}  # float zero points: initializer -> (group indicator, C)
    records: dict[str, dict[str, Any]] = {}
    replaced: dict[int, list[Any]] = {}
    for step, weight in enumerate(weights, 1):
        if progress:
            progress(step, len(weights), weight.node.name)
        w = numpy_helper.to_array(inits[weight.initializer]).astype(np.float32)
        w = w.T if weight.transposed else w
        n, k = w.shape
        if weight.initializer not in done:
            how = _tensor_recipe(recipe, _is_lm_head(weight))
            hessian = hessians.get(weight.node.input[0]) if hessians else None
            # GPTQ works on its Hessian in place, and q/k/v (or gate/up) share one
            qt = quantize_tensor(np.ascontiguousarray(w), how, None if hessian is None else hessian.copy())
            packed = to_matmulnbits(qt)
            stem = weight.initializer.replace("::", "_").replace("/", "_") + "_q"
            arrays = {f"{stem}.B": packed.B, f"{stem}.scales": packed.scales}
            if packed.zero_points is not None and qt.integer_zeros:
                arrays[f"{stem}.zero_points"] = packed.zero_points
            names = list(arrays)
            if not qt.integer_zeros:  # float zero points: x's group sums @ C beside a MatMulNBits without them
                indicator = f"edgekit_group_sums_{k}x{qt.group_size}"
                if indicator not in {i for i, _ in terms.values()}:  # one per input size and group
                    arrays[indicator] = group_indicator(k, qt.n_groups, qt.group_size)
                arrays[f"{stem}.zero_point_term"] = zero_point_table(qt)
                terms[weight.initializer] = (indicator, f"{stem}.zero_point_term")
            out.graph.initializer.extend(numpy_helper.from_array(a, name) for name, a in arrays.items())
            done[weight.initializer] = (qt, names)
        qt, names = done[weight.initializer]
        node = weight.node
        result = node.output[0] if weight.bias is None else node.output[0] + "/no_bias"
        product = result if weight.initializer not in terms else result + "/without_zero_points"
        nodes = [
            helper.make_node(
                "MatMulNBits",
                [node.input[0], *names],
                [product],
                name=node.name + "/MatMulNBits",
                domain="com.microsoft",
                K=k,
                N=n,
                bits=qt.bits,
                block_size=qt.group_size,
                accuracy_level=accuracy_level,
            )
        ]
        if weight.initializer in terms:
            indicator, table = terms[weight.initializer]
            sums, term = result + "/group_sums", result + "/zero_point_term"
            nodes += [
                helper.make_node("MatMul", [node.input[0], indicator], [sums], name=node.name + "/group_sums"),
                helper.make_node("MatMul", [sums, table], [term], name=node.name + "/zero_point_term"),
                helper.make_node("Add", [product, term], [result], name=node.name + "/zero_point_term/Add"),
            ]
        if weight.bias is not None:
            nodes.append(helper.make_node("Add", [result, weight.bias], [node.output[0]], name=node.name + "/bias"))
        replaced[id(node)] = nodes
        records[node.name] = {
            "weight": weight.initializer,
            "transposed": weight.transposed,
            "bits": qt.bits,
            "group_size": qt.group_size,
            "algorithm": qt.algorithm,
            "parameters": n * k,
            "bytes": qt.nbytes,
        }
    rewritten = []
    for node in out.graph.node:
        rewritten.extend(replaced.get(id(node), [node]))
    del out.graph.node[:]
    out.graph.node.extend(rewritten)
    used = {name for node in out.graph.node for name in node.input}
    kept = [i for i in out.graph.initializer if i.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    if not any(op.domain == "com.microsoft" for op in out.opset_import):
        out.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return out, records, {name: qt for name, (qt, _) in done.items()}


def dequantized_copy(model: Any, tensors: dict[str, QuantizedTensor], records: dict[str, dict[str, Any]]) -> Any:
    """The fp32 graph with every quantized weight replaced by its dequantized values: the
    reference the artifact must reproduce."""
    import onnx
    from onnx import numpy_helper

    layout = {r["weight"]: r["transposed"] for r in records.values()}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in tensors:
            w = tensors[init.name].dequantize().astype(np.float32)  # [N, K]
            w = w.T if layout[init.name] else w
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w), init.name))
    return out


def _save(model: Any, path: Path) -> None:
    import onnx

    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=1024,
    )


def verify_against_dequantized(
    model: Any,
    quantized: Any,
    tensors: dict[str, QuantizedTensor],
    records: dict[str, dict[str, Any]],
    work: Path,
    tokenizer: Any,
) -> dict[str, Any]:
    """The quantized graph (float32 compute) against the fp32 graph holding the same dequantized
    weights: prompt + cached decode steps, logits within TOLERANCE. Raises on a mismatch."""
    from onnx import helper

    from ..runtimes.onnx_optimum import OptimumRuntime
    from .verify import compare, run_greedy

    exact = type(quantized)()
    exact.CopyFrom(quantized)
    for node in exact.graph.node:
        if node.op_type == "MatMulNBits":
            for attr in node.attribute:
                if attr.name == "accuracy_level":
                    attr.CopyFrom(helper.make_attribute("accuracy_level", 0))
    _save(exact, work / "verify_q.onnx")
    _save(dequantized_copy(model, tensors, records), work / "verify_ref.onnx")
    prompt = tokenizer.load().encode("The capital of France is Paris. The capital of Italy is").ids[:16] or [0]
    context = len(prompt) + VERIFY_STEPS + 1
    ids, got = run_greedy(OptimumRuntime(work / "verify_q.onnx", context), prompt, VERIFY_STEPS)
    reference = OptimumRuntime(work / "verify_ref.onnx", context)
    want = np.stack([reference.prefill(prompt)] + [reference.decode(t) for t in ids[len(prompt) :]])
    result = compare(got, want, "the quantized optimum graph's")  # reference: the fp32 graph, same weights
    return {"checked": True, "against": "optimum's fp32 graph holding the dequantized weights", **result}


def collect_hessians(model: Any, work: Path, windows: list[list[int]]) -> dict[str, np.ndarray]:
    """x.T @ x of the input of every constant-weight MatMul/Gemm, by running the fp32 graph with those
    inputs added as outputs over the calibration windows."""
    import onnx
    from onnx import TensorProto, helper

    from ..runtimes.onnx_optimum import OptimumRuntime

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = sorted({w.node.input[0] for w in constant_weights(probe)})
    present = {o.name for o in probe.graph.output}
    for name in names:
        if name not in present:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    _save(probe, work / "calibrate.onnx")
    runtime = OptimumRuntime(work / "calibrate.onnx", max(len(w) for w in windows) + 1, extra_outputs=names)
    sums: dict[str, np.ndarray] = {}
    count = 0
    for window in windows:
        runtime.reset()
        runtime.prefill(window)
        for name, x in runtime.last_extra.items():
            x = x.reshape(-1, x.shape[-1]).astype(np.float64)
            sums[name] = sums.get(name, 0) + x.T @ x
        count += len(window)
    return {name: (h / count).astype(np.float32) for name, h in sums.items()}
