"""The numpy reference against transformers on tiny random checkpoints of every family."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ALL_FAMILIES, rel_err

from edgekit.reference import ReferenceModel
from edgekit.sources import open_checkpoint
from edgekit.testing import write_tiny_checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPT = [int(i) for i in np.random.default_rng(1).integers(3, 380, 40)]

VARIANTS = {
    "plain": {},
    "llama3-rope": {
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
    },
    "yarn-rope": {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}},
    "linear-rope": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    "rope_parameters": {"rope_parameters": {"rope_type": "default", "rope_theta": 50000.0}},
    "partial-rotary": {"partial_rotary_factor": 0.5},
    "biases-tied": {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True},
}
CASES = [(f, "plain") for f in ALL_FAMILIES] + [
    ("llama", "llama3-rope"),
    ("qwen2", "yarn-rope"),
    ("mistral", "linear-rope"),
    ("qwen3", "rope_parameters"),
    ("phi3", "partial-rotary"),
    ("llama", "biases-tied"),
]


def hf_logits(folder, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("family,variant", CASES)
def test_reference_matches_transformers(tmp_path, family, variant):
    folder = write_tiny_checkpoint(tmp_path / "m", family, **VARIANTS[variant])
    model = ReferenceModel.from_checkpoint(open_checkpoint(folder))
    expected = hf_logits(folder, PROMPT)

    whole = model.forward(PROMPT)
    assert rel_err(whole, expected) < 1e-4

    # token by token through the KV cache, after a short prefill
    cache = model.new_cache()
    stepped = [model.forward(PROMPT[:8], cache)]
    stepped += [model.forward([t], cache) for t in PROMPT[8:]]
    assert cache.length == len(PROMPT)
    assert rel_err(np.concatenate(stepped), expected) < 1e-4


def test_sliding_window_matches_transformers(tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "m", "mistral", sliding_window=16)
    model = ReferenceModel.from_checkpoint(open_checkpoint(folder))
    assert model.spec.sliding_window == 16
    assert rel_err(model.forward(PROMPT), hf_logits(folder, PROMPT)) < 1e-4


def test_bf16_checkpoint_reads_like_transformers(tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "m", "llama", bf16=True)
    checkpoint = open_checkpoint(folder)
    assert checkpoint.dtypes == {"BF16": len(checkpoint.tensors.keys())}
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ours = checkpoint.tensors.get("model.layers.0.self_attn.q_proj.weight")
    assert np.array_equal(ours, hf.state_dict()["model.layers.0.self_attn.q_proj.weight"].numpy())
    model = ReferenceModel.from_checkpoint(checkpoint)
    assert rel_err(model.forward(PROMPT), hf_logits(folder, PROMPT)) < 1e-4


def test_greedy_continuation_matches_transformers(tiny_models):
    folder = tiny_models["qwen2"]
    model = ReferenceModel.from_checkpoint(open_checkpoint(folder))
    ours = model.greedy(PROMPT[:10], 16)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    theirs = hf.generate(
        torch.tensor([PROMPT[:10]]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0
    )[0, 10:].tolist()
    assert ours == theirs


def test_a_gemma_folder_saved_by_transformers_runs_natively(tmp_path):
    """Gemma's quirks (a scaled embedding, norms by 1 + w, tied embeddings left out of config.json
    the way transformers 4 writes them) from a folder transformers itself wrote."""
    import json

    from edgekit import export, load
    from edgekit.quant.recipe import Recipe
    from edgekit.testing import tiny_tokenizer

    torch.manual_seed(0)
    config = transformers.GemmaConfig(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=384,
        max_position_embeddings=256,
    )
    model = transformers.GemmaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from their initial zeros, so a missing 1 + w shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.3)
    folder = tmp_path / "gemma"
    model.save_pretrained(folder)
    tiny_tokenizer(384).save(str(folder / "tokenizer.json"))
    saved = json.loads((folder / "config.json").read_text())
    saved.pop("tie_word_embeddings", None)
    (folder / "config.json").write_text(json.dumps(saved))

    checkpoint = open_checkpoint(folder)
    assert checkpoint.spec.family == "gemma" and checkpoint.spec.tie_word_embeddings
    with torch.no_grad():
        expected = model(torch.tensor([PROMPT])).logits[0].numpy()
    assert rel_err(ReferenceModel.from_checkpoint(checkpoint).forward(PROMPT), expected) < 1e-4

    result = export(folder, tmp_path / "gemma-onnx", recipe=Recipe(algorithm="rtn"), max_context=64)
    assert result.verify["checked"] and result.verify["top1_agreement"] == 1.0
    engine = load(result.output, profile=None)
    assert (
        engine.backend == "onnx" and len(engine.generate(PROMPT[:8], max_new_tokens=4, ignore_eos=True).token_ids) == 4
    )
