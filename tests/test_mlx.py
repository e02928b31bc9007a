"""MLX artifacts on MLX's CPU backend: packing against MLX's own kernels, parity with the numpy
reference for every family, loading by mlx-lm and loading mlx-lm's conversions, agreement with
the ONNX backend, and bad input."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import rel_err

from edgekit.cli import cli
from edgekit.errors import EdgekitError
from edgekit.exporters.mlx import MlxFolderWeights, write_mlx
from edgekit.exporters.pipeline import export
from edgekit.exporters.verify import run_greedy
from edgekit.generation.loader import load_runtime
from edgekit.quant.packing import to_mlx, unpack_words
from edgekit.quant.pipeline import quantize_checkpoint
from edgekit.quant.recipe import Recipe
from edgekit.quant.rtn import quantize_rtn
from edgekit.reference import ReferenceModel
from edgekit.runtimes.base import EMPTY_PROMPT
from edgekit.runtimes.mlx import MlxRuntime
from edgekit.sources import open_checkpoint
from edgekit.testing import FAMILY_CASES, write_tiny_checkpoint

mx = pytest.importorskip("mlx.core")

PROMPT = [int(i) for i in np.random.default_rng(5).integers(3, 380, 20)]
FAST = Recipe(algorithm="rtn", group_size=32, lm_head_bits=8)


@pytest.mark.parametrize("bits", [4, 5, 6, 8])
@pytest.mark.parametrize("zeros", ["integer", "float"])
def test_packing_matches_mlx_dequantize(bits, zeros):
    w = np.random.default_rng(0).standard_normal((48, 256)).astype(np.float32)
    qt = quantize_rtn(w, bits, 64, symmetric=False)
    if zeros == "float":  # HQQ's optimized zero points
        qt.zeros = qt.zeros + np.float32(0.25)
    packed = to_mlx(qt, np.float32)
    assert np.array_equal(unpack_words(packed.weight, bits), qt.codes)
    theirs = mx.dequantize(
        mx.array(packed.weight), mx.array(packed.scales), mx.array(packed.biases), group_size=64, bits=bits
    )
    assert np.allclose(np.array(theirs), qt.dequantize(), atol=1e-6)


@pytest.mark.parametrize("case", sorted(FAMILY_CASES))
def test_mlx_matches_reference_prompt_and_32_decode_steps(tmp_path, case):
    family = case.split("-")[0]
    checkpoint = open_checkpoint(write_tiny_checkpoint(tmp_path / "hf", family, **FAMILY_CASES[case]))
    qm = quantize_checkpoint(checkpoint, Recipe(algorithm="hqq", group_size=32, embedding_bits=4))
    write_mlx(tmp_path, checkpoint, qm)
    runtime = MlxRuntime(tmp_path, 64, dtype="float32", prefill_chunk=8)  # the prompt in three chunks
    reference = ReferenceModel(checkpoint.spec, MlxFolderWeights.open(tmp_path))
    ids, got = run_greedy(runtime, PROMPT, 32)
    expected = reference.forward(ids)[len(PROMPT) - 1 :]
    assert rel_err(got, expected) < 1e-3
    assert runtime.length == len(ids)
    assert rel_err(runtime.logits_all(PROMPT), reference.forward(PROMPT)) < 1e-3
    runtime.trim(len(PROMPT) - 1)  # a cache trimmed back gives the same logits as before
    assert rel_err(runtime.decode(PROMPT[-1]), expected[0]) < 1e-3


@pytest.fixture(scope="module")
def mlx_artifact(tmp_path_factory, tiny_models):
    out = tmp_path_factory.mktemp("mlx") / "tiny-llama-mlx"
    export(tiny_models["llama"], out, format="mlx", recipe=FAST, max_context=128)
    return out


def test_artifact_layout_and_manifest(mlx_artifact):
    names = sorted(p.name for p in mlx_artifact.iterdir())
    assert names == sorted(
        [
            "chat_template.jinja",
            "config.json",
            "edgekit.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )
    manifest = json.loads((mlx_artifact / "edgekit.json").read_text())
    assert manifest["format"] == "mlx" and manifest["flavor"] is None and manifest["max_context"] == 128
    assert manifest["verify"]["checked"] and manifest["verify"]["top1_agreement"] == 1.0
    assert manifest["verify"]["packing_error_in_bias_roundings"] <= 1.0
    config = json.loads((mlx_artifact / "config.json").read_text())
    assert config["quantization"]["group_size"] == 32 and config["quantization"]["bits"] == 4
    assert config["quantization"]["lm_head"] == {"group_size": 32, "bits": 8}  # per-layer override
    assert config["quantization_config"] == config["quantization"]


def test_export_takes_groups_that_divide_the_rows(tmp_path, tiny_models):
    # ONNX can keep a group that does not divide K and pad the last block (whole_groups=False); MLX's
    # groups must tile the row, so its export falls back to a smaller group even when asked to pad
    out = tmp_path / "g128"
    padded = Recipe(algorithm="rtn", group_size=128, whole_groups=False)
    export(tiny_models["llama"], out, format="mlx", recipe=padded, max_context=64)
    config = json.loads((out / "config.json").read_text())
    hidden = config["hidden_size"]
    assert hidden % 128 and config["quantization"]["model.layers.0.self_attn.q_proj"]["group_size"] < 128
    assert json.loads((out / "edgekit.json").read_text())["quantization"]["recipe"]["whole_groups"] is True


def test_layers_mlx_cannot_quantize_fall_back_per_layer(tmp_path):
    # intermediate 80: the down projection's input is not a multiple of 32 (nor of 64/128)
    checkpoint = open_checkpoint(write_tiny_checkpoint(tmp_path / "hf", "llama", intermediate_size=80))
    qm = quantize_checkpoint(checkpoint, FAST)
    write_mlx(tmp_path, checkpoint, qm)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization"]["model.layers.0.mlp.down_proj"] is False
    weights = MlxFolderWeights.open(tmp_path)
    assert weights.packed("model.layers.0.mlp.down_proj.weight") is None
    runtime = MlxRuntime(tmp_path, 64, dtype="float32")
    reference = ReferenceModel(checkpoint.spec, weights)
    assert rel_err(runtime.logits_all(PROMPT), reference.forward(PROMPT)) < 1e-3


def test_sharded_weights_load_like_one_file(tmp_path, tiny_models):
    checkpoint = open_checkpoint(tiny_models["qwen3"])
    qm = quantize_checkpoint(checkpoint, FAST)
    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    write_mlx(tmp_path / "one", checkpoint, qm)
    files = write_mlx(tmp_path / "many", checkpoint, qm, shard_bytes=20_000)
    assert len(files) > 2 and (tmp_path / "many" / "model.safetensors.index.json").is_file()
    one = MlxRuntime(tmp_path / "one", 64, dtype="float32").logits_all(PROMPT)
    many = MlxRuntime(tmp_path / "many", 64, dtype="float32").logits_all(PROMPT)
    assert np.array_equal(one, many)


# mlx-lm runs mistral as llama, without the sliding window: the same only while the window holds everything
@pytest.mark.parametrize("case", sorted(c for c in FAMILY_CASES if "sliding" not in c))
def test_mlx_lm_loads_the_artifact_and_generates_the_same_greedy_tokens(tmp_path, case):
    mlx_lm = pytest.importorskip("mlx_lm")
    source = write_tiny_checkpoint(tmp_path / "hf", case.split("-")[0], **FAMILY_CASES[case])
    mlx_artifact = tmp_path / "mlx"
    export(source, mlx_artifact, format="mlx", recipe=FAST, max_context=128)
    theirs, ours = _greedy_mlx_lm_and_edgekit(mlx_lm, mlx_artifact)
    assert ours == theirs


def test_five_and_six_bit_codes(tmp_path):
    """Codes MLX reads and ONNX Runtime does not: blocks at 6 bits, the edge layers' down projection
    at 5 (mlx-lm's per-module entry), each straddling uint32 words. The export verifies against the
    reference, mlx-lm loads the folder and generates edgekit's tokens, and the bytes sit between
    the 4- and 8-bit exports'."""
    source = write_tiny_checkpoint(tmp_path / "hf", "qwen2")
    sizes = {}
    for bits in (4, 6, 8):
        recipe = replace(FAST, bits=bits, edge_down_bits=5)
        result = export(source, tmp_path / str(bits), format="mlx", recipe=recipe, max_context=64)
        assert result.verify["checked"] and result.verify["top1_agreement"] == 1.0
        sizes[bits] = sum(f.stat().st_size for f in (tmp_path / str(bits)).glob("*.safetensors"))
    quantization = json.loads((tmp_path / "6" / "config.json").read_text())["quantization"]
    assert quantization["bits"] == 6 and quantization["model.layers.0.mlp.down_proj"] == {"group_size": 32, "bits": 5}
    weights = MlxFolderWeights.open(tmp_path / "6")
    words, _, _, bits, _ = weights.packed("model.layers.1.self_attn.q_proj.weight")
    assert bits == 6 and words.shape[1] * 32 == 6 * weights.spec.hidden_size
    assert sizes[4] < sizes[6] < sizes[8]
    theirs, ours = _greedy_mlx_lm_and_edgekit(pytest.importorskip("mlx_lm"), tmp_path / "6")
    assert ours == theirs


def _greedy_mlx_lm_and_edgekit(mlx_lm, folder, tokens: int = 16) -> tuple[list[int], list[int]]:
    """Greedy tokens after PROMPT from mlx-lm and from edgekit's runtime, both in float16 (the
    artifact's dtype, which mlx-lm computes in)."""
    from mlx_lm.generate import generate_step

    model, _ = mlx_lm.load(str(folder))
    theirs = [int(token) for token, _ in generate_step(mx.array(PROMPT), model, max_tokens=tokens)]
    runtime = MlxRuntime(folder, 64, dtype="float16")
    ours = [int(np.argmax(runtime.prefill(PROMPT)))]
    while len(ours) < tokens:
        ours.append(int(np.argmax(runtime.decode(ours[-1]))))
    return theirs, ours


@pytest.mark.parametrize("family", ["gemma", "qwen2"])  # tied, untied
def test_a_rotated_residual_stream_and_when_the_default_rotates(tmp_path, family):
    """A GPTQ-rounded MLX export rotates the residual stream by default where the lm_head is untied
    (only folded weights change: mlx-lm still loads the folder and generates edgekit's tokens); a
    tied model is rotated only when asked, and its folder then carries the 8-bit final matrix, which
    edgekit's runtime applies and mlx-lm refuses to load. Both verify against the reference."""
    tied = family == "gemma"
    source = write_tiny_checkpoint(tmp_path / "hf", family)
    recipe = Recipe(algorithm="gptq", group_size=32)
    export(source, tmp_path / "default", format="mlx", recipe=recipe, max_context=64)
    manifest = json.loads((tmp_path / "default" / "edgekit.json").read_text())
    assert manifest["quantization"]["recipe"]["rotate_residual"] is not tied

    asked = tmp_path / "asked"
    result = export(source, asked, format="mlx", recipe=replace(recipe, rotate_residual=True), max_context=64)
    assert result.verify["checked"] and result.verify["top1_agreement"] == 1.0
    quantization = json.loads((asked / "config.json").read_text())["quantization"]
    assert quantization.get("model.final_rotation") == ({"group_size": 32, "bits": 8} if tied else None)
    weights = MlxFolderWeights.open(asked)
    assert ("model.final_rotation.weight" in list(weights)) is tied
    reference = ReferenceModel(weights.spec, weights)
    assert rel_err(MlxRuntime(asked, 64, dtype="float32").logits_all(PROMPT), reference.forward(PROMPT)) < 1e-3
    mlx_lm = pytest.importorskip("mlx_lm")
    if tied:
        with pytest.raises(ValueError, match="final_rotation"):
            mlx_lm.load(str(asked))
    else:
        theirs, ours = _greedy_mlx_lm_and_edgekit(mlx_lm, asked)
        assert ours == theirs


def test_edgekit_runs_an_mlx_lm_conversion(tmp_path, tiny_models):
    convert = pytest.importorskip("mlx_lm").convert
    out = tmp_path / "mlx-lm-q4"
    convert(str(tiny_models["qwen2"]), str(out), quantize=True, q_group_size=32, q_bits=4, dtype="float32")
    loaded = load_runtime(out, max_context=64)
    assert loaded.backend == "mlx" and loaded.spec.family == "qwen2"
    weights = MlxFolderWeights.open(out)
    assert weights.packed("model.layers.1.self_attn.q_proj.weight") is not None  # really quantized
    reference = ReferenceModel(loaded.spec, weights)
    assert rel_err(loaded.runtime.logits_all(PROMPT), reference.forward(PROMPT)) < 1e-3

    import edgekit

    done = edgekit.load(out, profile=None).chat([{"role": "user", "content": "hi"}], max_new_tokens=8)
    assert done.stats.generated_tokens > 0


def test_onnx_and_mlx_backends_give_the_same_greedy_tokens(tmp_path, tiny_models):
    import edgekit

    engines = {}
    for fmt in ("onnx", "mlx"):
        out = tmp_path / fmt
        export(tiny_models["llama"], out, format=fmt, recipe=FAST, max_context=128, accuracy_level=0)
        engines[fmt] = edgekit.load(out, profile=None)
    kw = {"max_new_tokens": 24, "ignore_eos": True}
    onnx = engines["onnx"].generate("Paris is the capital of", **kw)
    mlx = engines["mlx"].generate("Paris is the capital of", **kw)
    assert onnx.token_ids == mlx.token_ids and len(mlx.token_ids) == 24


def test_bad_input(tmp_path, tiny_models, monkeypatch, mlx_artifact):
    # an mlx-lm folder of a family edgekit does not run
    folder = tmp_path / "gpt2-mlx"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "quantization": {"bits": 4}}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(EdgekitError, match="architecture 'gpt2' is not supported.*supported: llama"):
        load_runtime(folder)
    result = CliRunner().invoke(cli, ["run", str(folder), "-p", "hi"])
    assert result.exit_code == 2 and "gpt2" in result.output
    # a truncated weight file, a missing tensor
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "config.json").write_bytes((mlx_artifact / "config.json").read_bytes())
    (cut / "model.safetensors").write_bytes((mlx_artifact / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(EdgekitError, match="model.safetensors: MLX cannot read it .* truncated or corrupt"):
        MlxRuntime(cut)
    from edgekit.sources.safetensors_io import SafetensorsFile, write_safetensors

    full = SafetensorsFile(mlx_artifact / "model.safetensors")
    kept = {n: np.array(full.raw(n)) for n in full.tensors if not n.startswith("model.layers.1.mlp.down_proj")}
    write_safetensors(cut / "model.safetensors", kept)
    with pytest.raises(EdgekitError, match="tensor 'model.layers.1.mlp.down_proj.weight' is missing"):
        MlxRuntime(cut)
    # an MLX folder is something to run, not a source to export from
    result = CliRunner().invoke(cli, ["inspect", str(mlx_artifact)])
    assert result.exit_code == 2 and "an exported artifact, not a source checkpoint" in result.output
    (mlx_artifact.parent / "plain").mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        (mlx_artifact.parent / "plain" / name).write_bytes((mlx_artifact / name).read_bytes())
    with pytest.raises(EdgekitError, match="an MLX quantized model .mlx-lm layout., not a source checkpoint"):
        export(mlx_artifact.parent / "plain", tmp_path / "z", recipe=FAST)
    # a flavor is an ONNX notion
    with pytest.raises(EdgekitError, match="flavor 'cuda' applies to ONNX"):
        export(tiny_models["llama"], tmp_path / "x", format="mlx", flavor="cuda", recipe=FAST)
    # MLX not installed: one line saying what to install, before any work is done
    monkeypatch.setitem(sys.modules, "mlx", None)
    monkeypatch.setitem(sys.modules, "mlx.core", None)
    with pytest.raises(EdgekitError, match=r"pip install 'edgekit\[mlx\]'"):
        export(tiny_models["llama"], tmp_path / "y", format="mlx", recipe=FAST)
    assert not (tmp_path / "y").exists()
    with pytest.raises(EdgekitError, match=r"pip install 'edgekit\[mlx\]'"):
        load_runtime(mlx_artifact)


def test_matmuls_split_over_cpu_streams_give_identical_logits(mlx_artifact):
    one = MlxRuntime(mlx_artifact, 64, threads=1)
    three = MlxRuntime(mlx_artifact, 64, threads=3)
    assert not one.model.layers[0].mlp.down.streams and len(three.model.layers[0].mlp.down.streams) == 3
    assert np.array_equal(one.prefill(PROMPT), three.prefill(PROMPT))
    assert np.array_equal(one.decode(7), three.decode(7))


def test_empty_prompt_is_one_clear_error(mlx_artifact):
    runtime = load_runtime(mlx_artifact).runtime
    with pytest.raises(EdgekitError) as raised:
        runtime.prefill([])
    assert str(raised.value) == EMPTY_PROMPT and runtime.length == 0


def test_eval_runs_the_mlx_artifact_against_its_source(mlx_artifact, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    text = tmp_path / "prose.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. Paris is the capital of France. " * 12)
    result = CliRunner().invoke(cli, ["eval", str(mlx_artifact), "--text", str(text), "--window", "32", "--json"])
    assert result.exit_code == 0, result.output
    source, artifact = json.loads(result.output[result.output.index("[") :])
    assert artifact["model"] == "tiny-llama-mlx (mlx)" and source["tokens"] == artifact["tokens"]
    assert 0 < artifact["kl"] < 0.5 and 0.5 < artifact["perplexity_ratio"] < 2
