"""Emit an MLX artifact in mlx-lm's layout, read one back with numpy, and verify it.

Layout: `config.json` (the source's HF config plus mlx-lm's `quantization` key), safetensors
holding, for every quantized layer under its HF module name, `weight` (uint32 words of codes, low
bits first: eight 4-bit codes a word; quant/packing.pack_words), `scales` and `biases` (float16;
w = code * scale + bias), and the other tensors in float16; sharded past 5 GB with mlx-lm's index
file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgekitError
from ..families import FINAL_ROTATION, norm_names, norm_offset
from ..quant.packing import MLXWeights, to_mlx, unpack_words
from ..quant.pipeline import QuantizedModel
from ..runtimes.mlx import INDEX_FILE, module_settings, weight_files
from ..sources.checkpoint import Checkpoint
from ..sources.safetensors_io import DTYPES, SafetensorsFile, write_safetensors_streamed
from ..spec import ModelSpec, weight_shapes

MLX_GROUPS = (32, 64, 128)  # what MLX's affine kernels accept
SHARD_BYTES = 5 * 10**9  # mlx-lm shards past 5 GB
SCALE_DTYPE = np.float16

Planned = tuple[str, str, tuple[int, ...]]  # file tensor name, safetensors dtype, shape


def module_of(name: str) -> str:
    return name.removesuffix(".weight")


def stored_norms(spec: ModelSpec) -> dict[str, float]:
    """Norm weight -> what an MLX folder stores less than edgekit's multiplier: the source's
    convention, which mlx-lm follows (gemma's w, multiplied by 1 + w)."""
    offset = norm_offset(spec.family)
    return dict.fromkeys(norm_names(spec), offset) if offset else {}


def mlx_can_quantize(shape: tuple[int, int], bits: int, group_size: int) -> bool:
    return group_size in MLX_GROUPS and shape[1] % group_size == 0 and (shape[1] * bits) % 32 == 0


class _Tensors:
    """The artifact's tensors, packed on demand, one quantized layer at a time."""

    def __init__(self, qm: QuantizedModel, quantize: dict[str, bool]):
        self.qm, self.quantize = qm, quantize
        self._packed: tuple[str, MLXWeights] | None = None
        self.norms = stored_norms(qm.spec)

    def _mlx(self, name: str) -> MLXWeights:
        if self._packed is None or self._packed[0] != name:
            self._packed = (name, to_mlx(self.qm.quantized[name], SCALE_DTYPE))
        return self._packed[1]

    def __call__(self, file_name: str) -> np.ndarray:
        if file_name in self.qm.dense:
            return (self.qm.dense[file_name] - self.norms.get(file_name, 0.0)).astype(SCALE_DTYPE)
        module, _, part = file_name.rpartition(".")
        name = module + ".weight"
        if not self.quantize[name]:
            return self.qm.quantized[name].dequantize().astype(SCALE_DTYPE)
        return getattr(self._mlx(name), part)


def artifact_shapes(spec: ModelSpec, rotated_tied: bool) -> dict[str, tuple[int, ...]]:
    """The weights an MLX folder holds: the family's, and a rotated stream's final matrix when the
    lm_head is tied (quant/rotate.py)."""
    shapes = weight_shapes(spec)
    return {**shapes, FINAL_ROTATION: (spec.hidden_size, spec.hidden_size)} if rotated_tied else shapes


def plan(qm: QuantizedModel) -> tuple[list[Planned], dict[str, bool], dict[str, Any]]:
    """Tensors in file order; which weights stay quantized; mlx-lm's per-module entries of the
    `quantization` key for the ones that differ from the recipe's bits and group size."""
    shapes = artifact_shapes(qm.spec, FINAL_ROTATION in qm.quantized)
    planned: list[Planned] = []
    quantize: dict[str, bool] = {}
    per_module: dict[str, Any] = {}
    for name, shape in shapes.items():
        if name not in qm.quantized:
            planned.append((name, "F16", shape))
            continue
        record = qm.records[name]
        bits, group = record["bits"], record["group_size"]
        quantize[name] = mlx_can_quantize(shape, bits, group)  # type: ignore[arg-type]
        module = module_of(name)
        if not quantize[name]:
            per_module[module] = False
            planned.append((name, "F16", shape))
            continue
        if (bits, group) != (qm.recipe.bits, qm.recipe.group_size):
            per_module[module] = {"group_size": group, "bits": bits}
        n, k = shape
        planned += [
            (module + ".weight", "U32", (n, k * bits // 32)),
            (module + ".scales", "F16", (n, k // group)),
            (module + ".biases", "F16", (n, k // group)),
        ]
    return planned, quantize, per_module


def _nbytes(entry: Planned) -> int:
    return int(np.prod(entry[2])) * DTYPES[entry[1]][1]


def _shards(planned: list[Planned], limit: int) -> list[list[Planned]]:
    shards: list[list[Planned]] = [[]]
    size = 0
    for entry in planned:
        nbytes = _nbytes(entry)
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


def mlx_config(checkpoint: Checkpoint, qm: QuantizedModel, per_module: dict[str, Any]) -> dict[str, Any]:
    config = {k: v for k, v in checkpoint.config.items() if k not in ("quantization_config", "dtype")}
    s = checkpoint.spec
    config.update(
        model_type=s.family,
        tie_word_embeddings=s.tie_word_embeddings,
        head_dim=s.head_dim,
        torch_dtype="float16",
    )
    if s.rope.scaling == "llama3":  # HF's defaults written out: mlx-lm requires every key
        for key in ("rope_scaling", "rope_parameters"):
            if isinstance(config.get(key), dict):
                config[key] = {
                    **config[key],
                    "low_freq_factor": s.rope.low_freq_factor,
                    "high_freq_factor": s.rope.high_freq_factor,
                }
    if s.eos_token_ids:
        eos = list(checkpoint.eos_token_ids)
        config["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    quantization = {"group_size": qm.recipe.group_size, "bits": qm.recipe.bits, "mode": "affine", **per_module}
    config["quantization"] = quantization
    config["quantization_config"] = quantization  # what mlx-lm writes too
    return config


def write_mlx(folder: Path, checkpoint: Checkpoint, qm: QuantizedModel, shard_bytes: int = SHARD_BYTES) -> list[str]:
    """config.json, the safetensors file(s) and the tokenizer files. Returns the weight files."""
    if checkpoint.spec.rope.freq_factors is not None:
        raise EdgekitError(
            f"{checkpoint.source}: the GGUF's per-frequency rope factors (rope_freqs) cannot be written "
            "in an mlx-lm config; export the model's Hugging Face checkpoint to MLX instead"
        )
    planned, quantize, per_module = plan(qm)
    produce = _Tensors(qm, quantize)
    shards = _shards(planned, shard_bytes)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for file_name, shard in zip(names, shards, strict=True):
        write_safetensors_streamed(folder / file_name, shard, produce, {"format": "mlx"})
    if len(shards) > 1:
        total = sum(_nbytes(e) for e in planned)
        weight_map = {e[0]: f for f, shard in zip(names, shards, strict=True) for e in shard}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps(mlx_config(checkpoint, qm, per_module), indent=2))
    checkpoint.tokenizer.write(folder)
    return names


@dataclass(eq=False)
class MlxFolderWeights(Mapping[str, np.ndarray]):
    """An MLX model folder's weights as float32 arrays under canonical HF names, dequantized with
    numpy on access exactly as MLX does (code * scale + bias): the reference's view of it."""

    folder: Path
    spec: ModelSpec
    quantization: dict[str, Any]

    def __post_init__(self) -> None:
        self.files = [SafetensorsFile(p) for p in weight_files(self.folder)]
        self.where = {name: f for f in self.files for name in f.tensors}
        self.norms = stored_norms(self.spec)

    @classmethod
    def open(cls, folder: str | Path) -> MlxFolderWeights:
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        return cls(folder, ModelSpec.from_config(config, str(folder / "config.json")), config["quantization"])

    def _read(self, name: str) -> np.ndarray:
        return np.asarray(self.where[name].get(name), dtype=np.float32)

    def is_quantized(self, name: str) -> bool:
        return module_of(name) + ".scales" in self.where

    def packed(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int] | None:
        """(uint32 words, scales, biases, bits, group) of a quantized weight; None for a dense one."""
        if not self.is_quantized(name):
            return None
        module = module_of(name)
        bits, group = module_settings(self.quantization, module, self.folder / "config.json")
        words = self.where[name].get(name)
        return words, self._read(module + ".scales"), self._read(module + ".biases"), bits, group

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.where:
            raise KeyError(name)
        packed = self.packed(name)
        if packed is None:
            values = self._read(name)
            return values + np.float32(self.norms[name]) if name in self.norms else values
        words, scales, biases, bits, group = packed
        codes = unpack_words(words, bits).astype(np.float32).reshape(scales.shape[0], scales.shape[1], group)
        return (codes * scales[:, :, None] + biases[:, :, None]).reshape(scales.shape[0], -1)

    def __iter__(self) -> Iterator[str]:
        return (n for n in artifact_shapes(self.spec, FINAL_ROTATION in self.where) if n in self.where)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def check_packing(weights: MlxFolderWeights, qm: QuantizedModel) -> float:
    """The artifact's weights against the quantizer's, tensor by tensor; returns the largest
    difference in units of each group's bias. The only rounding allowed is the float16 bias
    (-zero * scale); anything more is a packing mistake."""
    worst = 0.0
    for name in qm.quantized:
        qt = qm.quantized[name]
        expected = qt.dequantize()
        got = weights[name]
        if not weights.is_quantized(name):  # written dense: float16 of the dequantized weight
            bound = np.abs(expected) * 2.0**-10 + 1e-7
        else:
            bias = np.abs(qt.zero_points() * qt.scales)[:, :, None]
            bound = np.broadcast_to(bias, (*bias.shape[:2], qt.group_size)).reshape(qt.shape[0], -1)
            bound = bound[:, : qt.shape[1]] * 2.0**-10 + 1e-7
        ratio = float(np.max(np.abs(got - expected) / bound))
        if ratio > 1.0:
            raise EdgekitError(
                f"verification failed: MLX weight {name} differs from the quantizer's by more than "
                "float16 rounding of its biases; nothing was written"
            )
        worst = max(worst, ratio)
    return worst


def verify_mlx(
    folder: Path, checkpoint: Checkpoint, qm: QuantizedModel, prompt: list[int], steps: int = 4, kv_bits: int = 0
) -> dict:
    """The packed weights against the quantizer's, then MLX's logits (float32 compute) for a prompt
    and cached decode steps against the numpy reference on the artifact's own weights: with a float
    KV cache at the float tolerance, then (kv_bits=8) with the int8 cache on the same tokens at its own."""
    import mlx.core as mx

    from ..runtimes.mlx import MlxRuntime
    from .verify import KV8_TOLERANCE, compare, reference_logits, run_forced, run_greedy

    weights = MlxFolderWeights.open(folder)
    packing = check_packing(weights, qm)
    context = len(prompt) + steps + 1
    runtime = MlxRuntime(folder, context, dtype="float32")
    ids, got = run_greedy(runtime, prompt, steps)
    del runtime
    expected = reference_logits(ids, len(prompt), checkpoint.spec, weights)
    result = {"checked": True, **compare(got, expected, "MLX")}
    if kv_bits:
        runtime = MlxRuntime(folder, context, dtype="float32", kv_bits=kv_bits)
        got = run_forced(runtime, ids, len(prompt))
        del runtime
        result["int8_kv_cache"] = compare(got, expected, "MLX with the int8 KV cache", KV8_TOLERANCE)
    device = "GPU" if mx.default_device() == mx.gpu else "CPU"
    return {"backend": f"MLX {device}, float32 compute", "packing_error_in_bias_roundings": packing, **result}
