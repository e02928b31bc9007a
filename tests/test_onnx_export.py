"""ONNX artifacts: parity with the numpy reference on the same dequantized weights, the artifact
folder and its manifest, and bad input."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from importlib.resources import files

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import rel_err

from edgekit.artifact import ALL_LOGITS_FILE, MODEL_FILE
from edgekit.cli import cli
from edgekit.errors import EdgekitError
from edgekit.exporters.onnx import write_onnx
from edgekit.exporters.onnx_decoder import OnnxOptions
from edgekit.exporters.pipeline import export
from edgekit.exporters.verify import FLOAT16_TOLERANCE, run_greedy
from edgekit.generation.loader import load_runtime
from edgekit.quant.packing import to_matmulnbits
from edgekit.quant.pipeline import quantize_checkpoint
from edgekit.quant.recipe import Recipe
from edgekit.reference import ReferenceModel
from edgekit.runtimes.onnx import OnnxRuntime
from edgekit.sources import open_checkpoint
from edgekit.testing import FAMILY_CASES, write_tiny_checkpoint

pytest.importorskip("onnx")

PROMPT = [int(i) for i in np.random.default_rng(3).integers(3, 380, 20)]


@pytest.mark.parametrize("case", sorted(FAMILY_CASES))
@pytest.mark.parametrize(
    "recipe,flavor",
    [
        (Recipe(algorithm="rtn", group_size=32, symmetric=False, embedding_bits=8), "cpu"),
        (Recipe(algorithm="hqq", group_size=32, symmetric=False, embedding_bits=4, embedding_group_size=32), "cpu"),
        (Recipe(algorithm="rtn", group_size=32), "cuda"),
    ],
    ids=["rtn-asym-8bit-embedding", "hqq-float-zeros-4bit-embedding", "cuda-float16-on-cpu"],
)
def test_onnx_matches_reference_prompt_and_32_decode_steps(tmp_path, case, recipe, flavor):
    """The cuda flavor's graph (float16 activations, KV cache and scales) runs on ONNX Runtime's CPU
    provider too, within float16's tolerance: the graph is checked here, its CUDA kernels only on a
    GPU (bench/cuda_check.py)."""
    family = case.split("-")[0]
    checkpoint = open_checkpoint(write_tiny_checkpoint(tmp_path / "hf", family, **FAMILY_CASES[case]))
    qm = quantize_checkpoint(checkpoint, recipe)
    write_onnx(tmp_path, checkpoint, qm, OnnxOptions(max_context=64, flavor=flavor, accuracy_level=0))
    kv_dtype, tolerance = (np.float16, FLOAT16_TOLERANCE) if flavor == "cuda" else (np.float32, 1e-3)
    runtime = OnnxRuntime(tmp_path / MODEL_FILE, checkpoint.spec, 64, kv_dtype=kv_dtype)
    reference = ReferenceModel(checkpoint.spec, qm.weights())
    ids, got = run_greedy(runtime, PROMPT, 32)
    expected = reference.forward(ids)[len(PROMPT) - 1 :]
    assert got.dtype == np.float32  # the graph's logits leave it as float32 in both flavors
    assert rel_err(got, expected) < tolerance
    assert runtime.length == len(ids)
    # every position at once, from an empty cache, through the second graph over the same weights
    everything = OnnxRuntime(tmp_path / ALL_LOGITS_FILE, checkpoint.spec, 64, kv_dtype=kv_dtype).logits_all(PROMPT)
    assert rel_err(everything, reference.forward(PROMPT)) < tolerance


def test_padded_last_blocks_match_reference(tmp_path):
    # 96 and 160 inputs in blocks of 64: every layer's last block is padded, as SmolLM2's 576 in 128
    folder = write_tiny_checkpoint(
        tmp_path / "hf", "llama", hidden_size=96, intermediate_size=160, num_attention_heads=3, num_key_value_heads=1
    )
    checkpoint = open_checkpoint(folder)
    qm = quantize_checkpoint(checkpoint, Recipe(algorithm="rtn", group_size=64, whole_groups=False))
    assert all(qm.quantized[n].codes.shape[1] % 64 == 0 and qm.quantized[n].shape[1] % 64 for n in qm.quantized)
    write_onnx(tmp_path, checkpoint, qm, OnnxOptions(max_context=64, accuracy_level=0))
    runtime = OnnxRuntime(tmp_path / MODEL_FILE, checkpoint.spec, 64)
    ids, got = run_greedy(runtime, PROMPT, 8)
    assert rel_err(got, ReferenceModel(checkpoint.spec, qm.weights()).forward(ids)[len(PROMPT) - 1 :]) < 1e-3


def test_the_progress_line_says_which_rows_take_other_blocks(tmp_path):
    from edgekit.exporters.pipeline import _groups_said

    folder = write_tiny_checkpoint(
        tmp_path / "hf", "llama", hidden_size=96, intermediate_size=160, num_attention_heads=3, num_key_value_heads=1
    )
    spec = open_checkpoint(folder).spec
    assert _groups_said(Recipe(group_size=64), spec) == "g64 (g32 on 96-wide inputs, g32 on 160-wide inputs)"
    padded = Recipe(group_size=64, whole_groups=False)
    assert _groups_said(padded, spec) == "g64 (96-wide inputs padded, 160-wide inputs padded)"
    assert _groups_said(Recipe(group_size=32), spec) == "g32"


def test_cuda_flavor_takes_whole_groups(tmp_path):
    # padded blocks have run in ONNX Runtime's CPU kernels only: the cuda flavor falls back instead
    folder = write_tiny_checkpoint(tmp_path / "hf", "llama")  # hidden 64: 128 does not divide it
    padded = Recipe(algorithm="rtn", group_size=128, whole_groups=False)
    export(folder, tmp_path / "out", flavor="cuda", recipe=padded, max_context=64)
    quantization = json.loads((tmp_path / "out" / "edgekit.json").read_text())["quantization"]
    assert quantization["recipe"]["whole_groups"] is True
    assert quantization["layers"]["model.layers.0.self_attn.q_proj.weight"]["group_size"] == 64


def test_cuda_flavor_export_verifies_its_float16_graph(tmp_path, monkeypatch):
    import edgekit.exporters.onnx_decoder as decoder

    folder = write_tiny_checkpoint(tmp_path / "hf", "qwen2")
    recipe = Recipe(algorithm="rtn", group_size=32)
    export(folder, tmp_path / "out", flavor="cuda", recipe=recipe, max_context=64)
    verify = json.loads((tmp_path / "out" / "edgekit.json").read_text())["verify"]
    assert verify["checked"] and verify["tolerance"] == FLOAT16_TOLERANCE and "float16 graph" in verify["graph"]
    assert verify["max_rel_error"] < FLOAT16_TOLERANCE

    def scales_five_percent_off(qt, scale_dtype=np.float32):
        packed = to_matmulnbits(qt, scale_dtype)
        packed.scales = (packed.scales * 1.05).astype(packed.scales.dtype)
        return packed

    monkeypatch.setattr(decoder, "to_matmulnbits", scales_five_percent_off)
    with pytest.raises(EdgekitError, match="verification failed: ONNX logits differ"):
        export(folder, tmp_path / "bad", flavor="cuda", recipe=recipe, max_context=64)
    assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("art")
    folder = write_tiny_checkpoint(root / "hf", "qwen2")
    export(folder, root / "out", recipe=Recipe(algorithm="rtn"), max_context=128, accuracy_level=0)
    return root / "out"


def test_artifact_layout_and_manifest(artifact):
    names = sorted(p.name for p in artifact.iterdir())
    assert names == sorted(
        [
            "chat_template.jinja",
            "edgekit.json",
            "genai_config.json",
            "generation_config.json",
            "model.onnx",
            "model.all_logits.onnx",
            "model.onnx.data",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )
    manifest = json.loads((artifact / "edgekit.json").read_text())
    assert manifest["format"] == "onnx" and manifest["flavor"] == "cpu" and manifest["max_context"] == 128
    assert set(manifest["files"]) == set(names) - {"edgekit.json"}
    layers = manifest["quantization"]["layers"]
    assert layers["model.layers.0.mlp.down_proj.weight"]["bits"] == 8  # an edge layer (Recipe.edge_down_bits)
    assert layers["model.layers.1.mlp.down_proj.weight"]["bits"] == 4
    assert manifest["verify"]["checked"] and manifest["verify"]["top1_agreement"] == 1.0
    genai = json.loads((artifact / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["num_key_value_heads"] == 2 and genai["search"]["past_present_share_buffer"]


def test_load_and_generate(artifact):
    loaded = load_runtime(artifact, max_context=64)
    assert loaded.backend == "onnx" and loaded.runtime.max_context == 64
    logits = loaded.runtime.prefill(loaded.tokenizer.encode("hello there"))
    assert logits.shape == (384,)


def test_changed_or_missing_file_is_caught(artifact, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    with open(copy / "model.onnx.data", "r+b") as f:
        f.seek(100)
        f.write(b"\x01\x02")
    with pytest.raises(EdgekitError, match="sha256 differs"):
        load_runtime(copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(EdgekitError, match="missing"):
        load_runtime(copy)


def test_unknown_format_version(artifact, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / "edgekit.json").read_text())
    manifest["format_version"] = 99
    (copy / "edgekit.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgekitError, match="format version 99"):
        load_runtime(copy)


def _edited_manifest(artifact, folder, edit) -> None:
    import shutil

    shutil.copytree(artifact, folder)
    manifest = json.loads((folder / "edgekit.json").read_text())
    edit(manifest)
    (folder / "edgekit.json").write_text(json.dumps(manifest))


def test_manifest_of_the_previous_layout_still_loads(artifact, tmp_path):
    """Artifacts exported before the typed manifest lack graph/model_type/vocab_size/npu."""

    def previous(manifest):
        for key in ("graph", "model_type", "vocab_size", "npu"):
            del manifest[key]
        manifest["format_version"] = 1

    _edited_manifest(artifact, tmp_path / "old", previous)
    loaded = load_runtime(tmp_path / "old")
    assert loaded.manifest.kind == "onnx-cpu" and loaded.vocab_size == loaded.spec.vocab_size


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m.pop("source"), "manifest field missing or malformed"),
        (lambda m: m.update(max_context="many"), "manifest field missing or malformed"),
        (lambda m: m.update(format="tflite"), "unknown artifact format 'tflite'"),
        (lambda m: m.update(spec=None), "manifest has no model spec"),
    ],
)
def test_damaged_manifest_is_one_clear_line(artifact, tmp_path, edit, message):
    _edited_manifest(artifact, tmp_path / "bad", edit)
    with pytest.raises(EdgekitError, match=message):
        load_runtime(tmp_path / "bad")


def test_context_longer_than_artifact(artifact):
    with pytest.raises(EdgekitError, match="longer than the artifact's 128"):
        load_runtime(artifact, max_context=1024)
    runtime = load_runtime(artifact, max_context=16).runtime
    with pytest.raises(EdgekitError, match="context is 16"):
        runtime.prefill(list(range(3, 23)))


def test_provider_not_installed(artifact):
    with pytest.raises(EdgekitError, match="not installed; available here: .*CPUExecutionProvider"):
        load_runtime(artifact, providers=["NoSuchExecutionProvider"])


def test_failed_verification_leaves_nothing(tmp_path, monkeypatch):
    import edgekit.exporters.pipeline as pipeline

    def broken(*args, **kwargs):
        raise EdgekitError("verification failed: simulated")

    monkeypatch.setattr(pipeline, "verify_onnx", broken)
    folder = write_tiny_checkpoint(tmp_path / "hf", "llama")
    with pytest.raises(EdgekitError, match="simulated"):
        export(folder, tmp_path / "out", recipe=Recipe(algorithm="rtn"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no output, no temporary folder


def test_export_measures_the_deployed_graph_on_this_cpu(tmp_path, monkeypatch):
    """The float32-compute graph is checked exactly; model.onnx as deployed (int8 compute on this
    CPU's kernels) is measured on the same tokens and recorded, with a warning past 0.1."""
    folder = write_tiny_checkpoint(tmp_path / "hf", "llama")
    verify = export(folder, tmp_path / "int8", recipe=Recipe(algorithm="rtn"), max_context=64).verify
    deployed = verify["int8_compute"]
    assert deployed["positions"] == verify["positions"] and deployed["tolerance"] == 0.1
    assert verify["max_rel_error"] < deployed["max_rel_error"] < 5e-2  # int8 rounds; not by much
    exact = export(folder, tmp_path / "f32", recipe=Recipe(algorithm="rtn"), max_context=64, accuracy_level=0)
    assert "int8_compute" not in exact.verify  # nothing but the float32 graph to run
    monkeypatch.setattr("edgekit.exporters.onnx.INT8_COMPUTE_WARNING", 1e-9)
    args = ["export", str(folder), "-o", str(tmp_path / "warned"), "-a", "rtn", "--max-context", "64"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "warning: ONNX Runtime's int8 kernels on this CPU move this artifact's logits" in result.output


def test_existing_output_needs_overwrite(artifact, tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "hf", "llama")
    with pytest.raises(EdgekitError, match="already exists"):
        export(folder, artifact)


def test_cli_export_and_run(tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "hf", "phi3")
    runner = CliRunner()
    result = runner.invoke(
        cli, ["export", str(folder), "-o", str(tmp_path / "art"), "-a", "rtn", "--max-context", "64"]
    )
    assert result.exit_code == 0, result.output
    assert "verify: logits within" in result.output
    assert "as deployed, int8 compute on this CPU: logits within" in result.output
    assert "warning" not in result.output
    result = runner.invoke(cli, ["run", str(tmp_path / "art"), "-p", "Hello", "-n", "4"])
    assert result.exit_code == 0, result.output
    assert "tokens/s" in result.output and "(onnx, profile generic-" in result.output
    result = runner.invoke(cli, ["export", str(folder), "-o", str(tmp_path / "art2"), "-g", "48"])
    assert result.exit_code == 2 and "group size 48" in result.output
    assert not (tmp_path / "art2").exists()


def test_onnxruntime_genai_generates_the_same_tokens(artifact):
    """onnxruntime-genai is a bench peer, not a test dependency: this runs where it is installed."""
    og = pytest.importorskip("onnxruntime_genai")
    model = og.Model(str(artifact))
    ids = [5, 17, 33, 100, 7, 250, 9, 12]
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 16, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    theirs = []
    while not generator.is_done():
        generator.generate_next_token()
        theirs.append(int(generator.get_next_tokens()[0]))
    runtime = load_runtime(artifact).runtime
    logits, ours = runtime.prefill(ids), []
    for _ in theirs:
        ours.append(int(logits.argmax()))
        logits = runtime.decode(ours[-1])
    assert ours == theirs


def test_runtime_path_imports_no_heavy_packages(artifact):
    """A Raspberry Pi install has numpy, onnxruntime, tokenizers, jinja2 and click only."""
    import subprocess
    import sys

    code = (
        "import sys, edgekit\n"
        f"engine = edgekit.load({str(artifact)!r})\n"
        "engine.generate('hello', max_new_tokens=4, temperature=0.7, top_p=0.9, seed=0)\n"
        "engine.chat([{'role': 'user', 'content': 'hi'}], max_new_tokens=4)\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnx', 'optimum', 'safetensors', 'gguf') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("case", sorted(FAMILY_CASES))
def test_projections_quantized_apart_fuse_by_kind(tmp_path, case):
    """k_proj at 8 bits among 4-bit q/v: q and v share one MatMulNBits, k gets its own, and the
    graph still matches the reference (a fused qkv_proj stays one tensor at one width)."""
    import onnx

    family = case.split("-")[0]
    checkpoint = open_checkpoint(write_tiny_checkpoint(tmp_path / "hf", family, **FAMILY_CASES[case]))
    recipe = Recipe(algorithm="rtn", group_size=32, key_bits=8)
    qm = quantize_checkpoint(checkpoint, recipe)
    write_onnx(tmp_path, checkpoint, qm, OnnxOptions(max_context=64, accuracy_level=0))
    graph = onnx.load(tmp_path / MODEL_FILE, load_external_data=False).graph
    qkv = sorted(
        (n.name, next(a.i for a in n.attribute if a.name == "bits"))
        for n in graph.node
        if n.op_type == "MatMulNBits" and n.name.startswith("/model/layers.0/attn/qkv_proj/")
    )
    if "model.layers.0.self_attn.k_proj.weight" in qm.quantized:
        assert qkv == [
            ("/model/layers.0/attn/qkv_proj/k_proj/MatMul/MatMulNBits", 8),
            ("/model/layers.0/attn/qkv_proj/q_proj+v_proj/MatMul/MatMulNBits", 4),
        ]
    else:
        assert qkv == [("/model/layers.0/attn/qkv_proj/MatMul/MatMulNBits", 4)]
    runtime = OnnxRuntime(tmp_path / MODEL_FILE, checkpoint.spec, 64)
    ids, got = run_greedy(runtime, PROMPT, 8)
    assert rel_err(got, ReferenceModel(checkpoint.spec, qm.weights()).forward(ids)[len(PROMPT) - 1 :]) < 1e-3


@pytest.mark.parametrize("family", ["gemma", "qwen2"])
def test_rotated_residual_exports_and_verifies(tmp_path, family):
    """Recipe.rotate_residual: the tied model's graph multiplies by the final matrix after its norm;
    both verify against the reference; the kinds that cannot carry it say so before any work."""
    import onnx

    folder = write_tiny_checkpoint(tmp_path / "hf", family)
    recipe = Recipe(algorithm="rtn", group_size=32, rotate_residual=True)
    result = export(folder, tmp_path / "out", recipe=recipe, max_context=64, accuracy_level=0)
    assert result.verify["checked"] and result.verify["top1_agreement"] == 1.0
    graph = onnx.load(tmp_path / "out" / MODEL_FILE, load_external_data=False).graph
    rotations = [n.name for n in graph.node if n.name.startswith("/model/final_rotation/")]
    assert rotations == (["/model/final_rotation/MatMul/MatMulNBits"] if family == "gemma" else [])  # tied
    manifest = json.loads((tmp_path / "out" / "edgekit.json").read_text())
    assert manifest["quantization"]["recipe"]["rotate_residual"] is True
    with pytest.raises(EdgekitError, match="rotate_residual: a onnx npu artifact cannot carry"):
        export(folder, tmp_path / "npu", flavor="npu", recipe=recipe)
    assert not (tmp_path / "npu").exists()


def test_the_default_rotates_where_the_runtime_applies_it(tmp_path):
    """rotate_residual left at None: on for a GPTQ-rounded ONNX cpu export; off where a profile says
    so, for a tied model's MLX export (test_mlx: an untied one rotates), for round-to-nearest, and for
    an artifact recorded before the switch existed."""
    folder = write_tiny_checkpoint(tmp_path / "hf", "gemma")
    recipe = Recipe(algorithm="gptq", group_size=32)
    assert recipe.rotate_residual is None and recipe.with_rotation(True).rotate_residual is True
    assert replace(recipe, reorder_residual=True).with_rotation(True).rotate_residual is False
    assert replace(recipe, algorithm="rtn").with_rotation(True).rotate_residual is False

    def recorded(output, **options):
        export(folder, tmp_path / output, max_context=64, accuracy_level=0, **options)
        return json.loads((tmp_path / output / "edgekit.json").read_text())["quantization"]["recipe"]

    assert recorded("cpu", recipe=recipe)["rotate_residual"] is True
    board = (files("edgekit.device_profiles") / "generic-x86-64-cpu.toml").read_text()
    profile = tmp_path / "board.toml"
    profile.write_text(board.replace("[export]", "[export]\nrotate_residual = false"))
    assert recorded("profile", profile=profile)["rotate_residual"] is False
    if importlib.util.find_spec("mlx") is not None:
        assert recorded("mlx", recipe=recipe, format="mlx")["rotate_residual"] is False
    with pytest.raises(EdgekitError, match="the optimum path cannot rotate the residual stream"):
        export(folder, tmp_path / "optimum", via="optimum", recipe=replace(recipe, rotate_residual=True))
    assert not (tmp_path / "optimum").exists()
    old = Recipe().to_dict()
    del old["rotate_residual"]
    assert Recipe.from_record(old).rotate_residual is False
