"""The generic export path through optimum, on tiny random checkpoints of architectures outside the
native families, built here with transformers. optimum-onnx needs transformers < 5, which mlx-lm
(in the dev extra) does not accept: `make test` runs this file again in `.venv-optimum`, a
virtualenv with the `optimum` extra; in the main one only the missing-extra errors are tested."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import edgekit
from edgekit.quant.recipe import Recipe


def _has_optimum() -> bool:
    try:
        return importlib.util.find_spec("optimum.exporters.onnx") is not None
    except ImportError:
        return False


needs_optimum = pytest.mark.skipif(not _has_optimum(), reason="the optimum extra runs in .venv-optimum (make test)")
STEPS = 32


def _tiny_folder(folder, model):
    from edgekit.testing import tiny_tokenizer

    model.save_pretrained(folder)
    tiny_tokenizer(model.config.vocab_size).save(str(folder / "tokenizer.json"))
    template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "chat_template": template}))
    return folder


def _gpt2(folder):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=384, n_positions=256, bos_token_id=1, eos_token_id=2)
    return _tiny_folder(folder, GPT2LMHeadModel(config))


def _gpt_neox(folder):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        vocab_size=384,
        max_position_embeddings=256,
        rotary_pct=0.25,
        bos_token_id=1,
        eos_token_id=2,
    )
    return _tiny_folder(folder, GPTNeoXForCausalLM(config))


def _opt(folder):
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        num_hidden_layers=2,
        hidden_size=64,
        ffn_dim=128,
        num_attention_heads=4,
        vocab_size=384,
        max_position_embeddings=256,
        word_embed_proj_dim=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return _tiny_folder(folder, OPTForCausalLM(config))


BUILDERS = {"gpt2": _gpt2, "gpt_neox": _gpt_neox, "opt": _opt}


@pytest.fixture(autouse=True)
def _seeded():
    """transformers draws a new model's weights from torch's generator: the same tiny model every run."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)


def _matmulnbits_weights(artifact) -> dict[str, np.ndarray]:
    """Each quantized weight as the artifact's MatMulNBits computes with it, [N, K], by node name."""
    import onnx
    from onnx import helper, numpy_helper

    from edgekit.quant.packing import unpack_low_first

    model = onnx.load(str(artifact / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    # float zero points: a MatMulNBits without them plus x's group sums @ C, C [groups, N] (see packing)
    tables = {
        n.name.removesuffix("/zero_point_term"): inits[n.input[1]]
        for n in model.graph.node
        if n.op_type == "MatMul" and n.name.endswith("/zero_point_term")
    }
    out = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        n, k, bits, block = attrs["N"], attrs["K"], attrs["bits"], attrs["block_size"]
        blocks = -(-k // block)
        codes = unpack_low_first(inits[node.input[1]], bits, block).reshape(n, blocks, block).astype(np.float32)
        scales = inits[node.input[2]].reshape(n, blocks, 1).astype(np.float32)
        if len(node.input) > 3 and node.input[3]:
            zp = inits[node.input[3]]
            if zp.dtype == np.uint8:
                zp = unpack_low_first(zp.reshape(n, -1), bits, blocks)
            zeros = zp.reshape(n, blocks, 1).astype(np.float32)
        else:
            zeros = np.float32(2 ** (bits - 1))
        w = (codes - zeros) * scales
        name = node.name.removesuffix("/MatMulNBits")
        if name in tables:
            w = w + tables[name].T[:, :, None]
        out[name] = w.reshape(n, -1)[:, :k]
    return out


def _torch_with_artifact_weights(folder, artifact):
    """The transformers model with each weight the artifact quantized replaced by its dequantized
    values. The fp32 graph optimum exports names each weight; matching its values to the torch
    parameters (as stored or transposed) finds which parameter it is."""
    import onnx
    import torch
    from onnx import numpy_helper
    from optimum.exporters.onnx import main_export
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    fp32 = artifact.parent / (artifact.name + "-fp32")
    main_export(str(folder), output=fp32, task="text-generation-with-past", do_validation=False)
    originals = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(fp32 / "model.onnx")).graph.initializer}
    records = json.loads((artifact / "edgekit.json").read_text())["quantization"]["layers"]
    params = dict(model.named_parameters())
    deq = _matmulnbits_weights(artifact)
    replaced = 0
    for node, record in records.items():
        original = originals[record["weight"]]
        w = deq[node]  # [N, K]
        for name, p in params.items():
            value = p.detach().numpy()
            if value.shape == original.shape and np.array_equal(value, original):
                new = w.T if record["transposed"] else w
            elif value.shape == original.T.shape and np.array_equal(value, original.T):
                new = w if record["transposed"] else w.T
            else:
                continue
            module_name, attr = name.rsplit(".", 1)
            module = model.get_submodule(module_name)
            setattr(module, attr, torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(new))))  # unties
            replaced += 1
            break
    assert replaced == len(records)
    return model


@needs_optimum
@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_other_architectures_export_through_optimum_and_match_transformers(arch, tmp_path):
    import torch

    folder = BUILDERS[arch](tmp_path / arch)
    notices: list[str] = []
    artifact = tmp_path / f"{arch}-int4"
    result = edgekit.export(folder, artifact, recipe=Recipe(algorithm="hqq"), accuracy_level=0, stage=notices.append)
    assert any("exporting through optimum" in n for n in notices)  # picked by itself, with a notice
    assert result.verify["checked"] and result.verify["max_rel_error"] < 1e-3
    manifest = json.loads((artifact / "edgekit.json").read_text())
    assert manifest["graph"] == "optimum" and manifest["model_type"] == arch
    assert all(r["bits"] in (4, 8) for r in manifest["quantization"]["layers"].values())

    engine = edgekit.load(artifact, profile=None)
    prompt = [5, 17, 42, 99, 7, 130]
    ours = engine.generate(prompt, max_new_tokens=STEPS, ignore_eos=True).token_ids

    model = _torch_with_artifact_weights(folder, artifact)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        theirs = model.generate(
            ids, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(prompt) :].tolist()
    assert ours == theirs

    chat = engine.chat("hello", max_new_tokens=4)  # the same generation API on top
    assert chat.stats.generated_tokens >= 1


@needs_optimum
def test_llama_through_optimum_gives_the_native_paths_tokens(tiny_models, tmp_path):
    # the optimum path quantizes every weight at the recipe's bits: no per-layer rules (edge_down_bits)
    recipe = Recipe(algorithm="rtn", lm_head_bits=8, embedding_bits=8, edge_down_bits=None)
    native = edgekit.export(tiny_models["llama"], tmp_path / "native", recipe=recipe, accuracy_level=0)
    generic = edgekit.export(tiny_models["llama"], tmp_path / "optimum", recipe=recipe, accuracy_level=0, via="optimum")
    assert json.loads((generic.output / "edgekit.json").read_text())["graph"] == "optimum"
    prompt = [5, 17, 42, 99, 7, 130]
    tokens = [
        edgekit.load(a.output, profile=None).generate(prompt, max_new_tokens=STEPS, ignore_eos=True).token_ids
        for a in (native, generic)
    ]
    assert tokens[0] == tokens[1]


@needs_optimum
def test_gptq_through_optimum_uses_calibration_activations(tmp_path):
    folder = _gpt2(tmp_path / "gpt2")
    text = tmp_path / "calibration.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    recipe = Recipe(algorithm="gptq", calibration_window=64, calibration_samples=4)
    result = edgekit.export(folder, tmp_path / "gptq", recipe=recipe, calibration=text, via="optimum")
    layers = json.loads((result.output / "edgekit.json").read_text())["quantization"]["layers"]
    assert {r["algorithm"] for r in layers.values()} == {"gptq"}
    with pytest.raises(edgekit.EdgekitError, match="calibration"):
        edgekit.export(folder, tmp_path / "no-text", recipe=recipe, via="optimum")


@needs_optimum
def test_an_architecture_optimum_cannot_export_is_one_line(tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    folder = tmp_path / "strange"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-arch", "architectures": ["NoSuch"]}))
    from edgekit.testing import tiny_tokenizer

    tiny_tokenizer().save(str(folder / "tokenizer.json"))
    result = CliRunner().invoke(cli, ["export", str(folder), "-o", str(tmp_path / "out"), "--via", "optimum"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(_has_optimum(), reason="checks the error shown when the optimum extra is missing")
def test_without_the_extra_the_error_says_what_to_install(tiny_models, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["export", str(tiny_models["llama"]), "-o", str(out), "--via", "optimum"])
    assert result.exit_code == 2 and "pip install 'edgekit[optimum]'" in result.output
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    result = CliRunner().invoke(cli, ["export", str(folder), "-o", str(out)])
    assert result.exit_code == 2
    assert "not supported" in result.output and "pip install 'edgekit[optimum]'" in result.output
    assert not out.exists()


@needs_optimum
def test_empty_prompt_is_one_clear_error(tiny_models, tmp_path):
    from edgekit.runtimes.base import EMPTY_PROMPT

    artifact = edgekit.export(tiny_models["llama"], tmp_path / "optimum", recipe=Recipe(algorithm="rtn"), via="optimum")
    runtime = edgekit.load(artifact.output, profile=None).runtime
    assert type(runtime).__name__ == "OptimumRuntime"
    with pytest.raises(edgekit.EdgekitError) as raised:
        runtime.prefill([])
    assert str(raised.value) == EMPTY_PROMPT and runtime.length == 0
