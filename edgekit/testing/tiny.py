"""Tiny random Hugging Face checkpoints, written with numpy alone (no torch, no network).

The weights are random but not degenerate: norms sit near 1 and projections are scaled so
that logits spread out, which keeps greedy decoding meaningful in parity tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..families import EMBED, norm_offset
from ..sources.safetensors_io import write_safetensors
from ..spec import FAMILIES, spec_from_config, weight_shapes

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = """
The quick brown fox jumps over the lazy dog. Edge devices run small language models.
def add(a, b):\n    return a + b\n
Paris is the capital of France. Berlin is the capital of Germany. Tokyo is in Japan.
Café crème, naïve résumé, über straße. 你好世界. 😀 🚀 emoji!
Numbers like 12345 and 3.14159 appear in text; so do URLs such as https://example.com/path?q=1.
"""


# family (first word) and config overrides: every family and every rope variant the exporters build
FAMILY_CASES = {
    "llama": {},
    "mistral-sliding-window": {"sliding_window": 12},
    "qwen2": {},
    "qwen3": {},
    "phi3-partial-rotary": {"partial_rotary_factor": 0.5, "hidden_size": 128},
    "llama-tied-llama3-rope": {
        "tie_word_embeddings": True,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64},
    },
    "qwen2-yarn": {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}},
    "gemma": {},
}


def tiny_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer trained on a fixed text, with ChatML special tokens first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return tok


def tiny_config(family: str = "llama", **overrides: Any) -> dict[str, Any]:
    """An HF config.json dict for a small model of `family` (GQA 4/2 heads, 2 layers)."""
    fam = FAMILIES[family]
    config: dict[str, Any] = {
        "model_type": family,
        "architectures": [fam.architecture],
        "vocab_size": 384,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    if family == "qwen3":
        config["head_dim"] = 32  # qwen3 decouples head_dim from hidden / heads
    if family == "phi3":
        config["pad_token_id"] = 0
    if family == "gemma":  # as released: tied, head_dim apart from hidden / heads, both activation keys
        config.update(head_dim=32, tie_word_embeddings=True, hidden_act="gelu", hidden_activation="gelu_pytorch_tanh")
    config.update(overrides)
    return config


def write_checkpoint(
    folder: Path,
    config: dict[str, Any],
    tensors: dict[str, np.ndarray],
    tokenizer=None,
    bf16: bool = False,
    shards: int = 1,
) -> Path:
    """Write an HF model folder: config, safetensors (optionally sharded / bf16), tokenizer files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    names = list(tensors)
    as_bf16 = frozenset(n for n in names if bf16 and tensors[n].dtype == np.float32)
    if shards == 1:
        write_safetensors(folder / "model.safetensors", tensors, bf16=as_bf16)
    else:
        weight_map = {}
        for k, chunk in enumerate(np.array_split(np.arange(len(names)), shards)):
            shard = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            write_safetensors(folder / shard, {names[i]: tensors[names[i]] for i in chunk}, bf16=as_bf16)
            weight_map.update({names[i]: shard for i in chunk})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    tok = tokenizer if tokenizer is not None else tiny_tokenizer(config["vocab_size"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<|endoftext|>",
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "add_bos_token": False,
                "chat_template": CHATML_TEMPLATE,
                "model_max_length": config["max_position_embeddings"],
            },
            indent=2,
        )
    )
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": config.get("bos_token_id"), "eos_token_id": config.get("eos_token_id")})
    )
    return folder


def random_weights(config: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    spec = spec_from_config(config)
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    stored_norm = 1.0 - norm_offset(spec.family)  # near 1 as the multiplier the family makes of it
    for name, shape in weight_shapes(spec).items():
        if name.endswith("norm.weight"):
            values = stored_norm + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            values = 0.1 * rng.standard_normal(shape)
        elif name == EMBED:
            values = rng.standard_normal(shape)
        else:
            values = rng.standard_normal(shape) / np.sqrt(shape[-1])
        tensors[name] = values.astype(np.float32)
    return tensors


def write_tiny_checkpoint(
    folder: Path, family: str = "llama", *, seed: int = 0, bf16: bool = False, shards: int = 1, **config_overrides: Any
) -> Path:
    """A tiny random checkpoint of `family` in `folder`; config keys can be overridden."""
    config = tiny_config(family, **config_overrides)
    return write_checkpoint(folder, config, random_weights(config, seed), bf16=bf16, shards=shards)
