"""Recipes: which bits, group size and algorithm each weight gets."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..errors import EdgekitError
from ..families import EMBED, LAYER_NAME, LM_HEAD
from .tensor import check_bits_and_group, layer_group

# "awq-gptq": AWQ's activation-aware scaling, then GPTQ's error-compensating rounding
ALGORITHMS = ("rtn", "hqq", "awq", "gptq", "awq-gptq")
CALIBRATED = ("awq", "gptq", "awq-gptq")
SCALED = ("awq", "awq-gptq")
GPTQ_ROUNDED = ("gptq", "awq-gptq")
MAX_EMBEDDING_GROUP = 64  # the embedding's default group follows the recipe's, up to this (Recipe)


def edge_layers(num_layers: int) -> list[int]:
    """The first and last eighth of the layers (n < L/8 or n >= 7L/8: the first layer at least), as
    llama.cpp's Q4_K_M picks the layers whose ffn_down gets more bits."""
    return [n for n in range(num_layers) if n < num_layers / 8 or n >= 7 * num_layers / 8]


def _layer_part(name: str) -> tuple[int, str] | None:
    """(layer, the name within it) of a decoder layer's weight: (3, 'mlp.down_proj.weight')."""
    match = LAYER_NAME.match(name)
    return None if match is None else (int(match.group(1)), match.group(2))


def _matches(pattern: str, name: str) -> bool:
    """An override's glob against a weight name, with or without its ".weight"."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name.removesuffix(".weight"), pattern)


def _edge_down(name: str, num_layers: int) -> bool:
    found = _layer_part(name)
    return found is not None and found[1] == "mlp.down_proj.weight" and found[0] in edge_layers(num_layers)


def _key(name: str) -> bool:
    found = _layer_part(name)
    return found is not None and found[1] == "self_attn.k_proj.weight"


def tensor_class(name: str) -> str:
    if name == EMBED:
        return "embedding"
    if name == LM_HEAD:
        return "lm_head"
    return "attention" if ".self_attn." in name else "mlp"


@dataclass(frozen=True)
class TensorRecipe:
    """What one weight gets."""

    bits: int
    group_size: int
    algorithm: str
    symmetric: bool
    whole_groups: bool = False

    def group_for(self, k: int) -> int:
        """The group this weight gets at input size k (see layer_group)."""
        return layer_group(k, self.group_size, self.whole_groups)


@dataclass(frozen=True)
class Recipe:
    """Defaults: the algorithms measured best on SmolLM2-135M (and on its off-grid copy) within the
    bytes of onnxruntime-genai's int4 export (bench/quant_quality.py): AWQ scaling + GPTQ rounding,
    4-bit blocks of 128 with zero points in the decoder layers (the down projection of the first and
    last eighth of the layers at 8 bits), and a 4-bit embedding in blocks of 64 shared with the tied
    lm_head, rounded by GPTQ on the lm_head's calibration inputs.
    Blocks of 128 because ONNX Runtime's int8-compute kernels ran them 30-35% faster than blocks of
    64 on 0.5B-1B shapes (a float32 scale and block sum per block, converted and scaled per block):
    SmolLM2 prefill +19%, decode +4% (README, Results), at perplexity 44.6 instead of 42.4 on the
    suite's text (llama.cpp's Q4_0: 47.8). A row the block does not divide (SmolLM2's 576) takes the
    largest smaller block that tiles it (whole_groups): on an AVX2 host that ran level with a padded
    last block, in fewer bytes, with 6-11% less held-out KL; AVX-512 VNNI kernels ran the padded
    blocks faster (the x86-64-avx512 profile keeps them). The embedding takes blocks of at
    most 64: at 128 it cost perplexity (44.9) for no measurable speed."""

    algorithm: str = "awq-gptq"
    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    # per tensor class; None = `bits`. The tied embedding doubles as the lm_head and uses embedding_bits.
    embedding_bits: int | None = 4
    lm_head_bits: int | None = 8
    attention_bits: int | None = None
    mlp_bits: int | None = None
    embedding_group_size: int | None = None  # None = group_size, at most MAX_EMBEDDING_GROUP
    # the MLP's down projection in the first and last eighth of the layers (edge_layers) at these
    # bits; None: as the other MLP weights. Those layers hold most of the loss: at 8 bits, +4% bytes
    # on SmolLM2, the KL to the source fell 6-15% on every held-out text of both copies, with
    # prefill and decode within 1% at 135M and at the 1B shape (README, Quantization)
    edge_down_bits: int | None = 8
    # the attention's key projection (k_proj; not a fused qkv_proj) in every layer at these bits;
    # None: as the other attention weights. Opt-in: at 8 bits (+2.5% bytes on SmolLM2) the KL to the
    # source fell 4-16% on every held-out text of both copies, but k then needs a MatMulNBits of its
    # own beside the fused q/v, which cost 6% of SmolLM2's decode speed (README, Quantization)
    key_bits: int | None = None
    embedding_symmetric: bool = False
    # None: GPTQ under a calibrated recipe, on the lm_head's inputs, which a tied embedding serves
    # too (an untied embedding, a lookup table with no input activations, then gets HQQ); else the
    # recipe's algorithm.
    embedding_algorithm: str | None = None
    # glob over weight names -> {"bits": .., "group_size": .., "algorithm": .., "symmetric": ..}
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration_samples: int = 16
    calibration_window: int = 256
    # an input size the group does not divide: True falls back to the largest smaller group that
    # divides it (MLX's and the cuda flavor's kernels need it); False keeps the group with its last
    # block zero-padded (ONNX cpu/npu only)
    whole_groups: bool = True
    # exact reorderings of channels that put inputs of like magnitude into the same block
    # (quant/reorder.py): the residual stream's, once for the model, and each MLP's intermediate.
    # Opt-in: measured better on three of four held-out model/text pairs but worse on the off-grid
    # prose and on the MLX default, with a larger int8-compute error (README, Quantization)
    reorder_residual: bool = False
    reorder_intermediate: bool = False
    # an exact random rotation of the residual stream, norm weights folded in (quant/rotate.py):
    # spreads outlier channels over every block (the off-grid copy's KL to the source -30%, SmolLM2's
    # prose -7%, speed within 1%; README, Quantization). None, the default: on where the artifact's
    # runtime applies a tied model's final projection (ONNX cpu/cuda, the numpy reference) and GPTQ
    # rounds; off for MLX, npu, the optimum path and round-to-nearest (with_rotation decides it)
    rotate_residual: bool | None = None
    # the rotation's seed (quant/rotate.random_rotation): the self-calibrated quality moves with it
    # by several percent (SmolLM2's prose x1.23-1.35 over two seeds; README, Quantization)
    rotation_seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise EdgekitError(f"unknown quantization algorithm '{self.algorithm}'; use one of {', '.join(ALGORITHMS)}")
        check_bits_and_group(self.bits, self.group_size)
        for key in ("embedding_bits", "lm_head_bits", "attention_bits", "mlp_bits", "edge_down_bits", "key_bits"):
            value = getattr(self, key)
            if value is not None:
                check_bits_and_group(value, self.group_size, key)
        if self.embedding_group_size is not None:
            check_bits_and_group(self.bits, self.embedding_group_size)
        if self.rotate_residual and self.reorder_residual:
            raise EdgekitError("rotate_residual and reorder_residual both move the residual stream; choose one")
        for pattern, values in self.overrides.items():
            unknown = set(values) - {"bits", "group_size", "algorithm", "symmetric"}
            if unknown:
                raise EdgekitError(
                    f"override '{pattern}': unknown keys {sorted(unknown)}; "
                    "allowed: bits, group_size, algorithm, symmetric"
                )
            if "bits" in values or "group_size" in values:
                bits, group = values.get("bits", self.bits), values.get("group_size", self.group_size)
                check_bits_and_group(bits, group, f"override '{pattern}': bits")

    @property
    def needs_calibration(self) -> bool:
        return (
            self.algorithm in CALIBRATED
            or self.embedding_algorithm in CALIBRATED
            or any(o.get("algorithm") in CALIBRATED for o in self.overrides.values())
        )

    def for_tensor(self, name: str, num_layers: int | None = None) -> TensorRecipe:
        """num_layers: the model's, which places the edge layers (edge_down_bits); None: no edge layers."""
        cls = tensor_class(name)
        bits = {
            "embedding": self.embedding_bits,
            "lm_head": self.lm_head_bits,
            "attention": self.attention_bits,
            "mlp": self.mlp_bits,
        }[cls] or self.bits
        if self.edge_down_bits and num_layers and _edge_down(name, num_layers):
            bits = self.edge_down_bits
        if self.key_bits and _key(name):
            bits = self.key_bits
        group, algorithm = self.group_size, self.algorithm
        if cls == "embedding":
            group = self.embedding_group_size or min(group, MAX_EMBEDDING_GROUP)
            algorithm = self.embedding_algorithm or ("gptq" if algorithm in CALIBRATED else algorithm)
        symmetric = self.embedding_symmetric if cls == "embedding" else self.symmetric
        chosen = TensorRecipe(bits, group, algorithm, symmetric, self.whole_groups)
        for pattern, values in self.overrides.items():
            if _matches(pattern, name):
                chosen = replace(chosen, **values)
        check_bits_and_group(chosen.bits, chosen.group_size)
        if chosen.algorithm not in ALGORITHMS:
            raise EdgekitError(f"unknown quantization algorithm '{chosen.algorithm}' for {name}")
        return chosen

    def check_overrides(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Refuse an override that names none of the model's matrices (`shapes`: spec.weight_shapes):
        a mistyped pattern would otherwise leave the recipe silently unchanged."""
        weights = [name for name, shape in shapes.items() if len(shape) == 2]
        for pattern in self.overrides:
            if not any(_matches(pattern, name) for name in weights):
                example = next((w for w in weights if ".layers." in w), weights[0]).removesuffix(".weight")
                raise EdgekitError(
                    f"tensor pattern '{pattern}' matches no weight of this model; patterns are globs over "
                    f"weight names such as {example} (e.g. '*.{example.rsplit('.', 1)[-1]}')"
                )

    def with_rotation(self, applies: bool) -> Recipe:
        """The recipe with rotate_residual decided: the default (None) becomes `applies`, whether the
        runtime the weights go to applies a rotated stream's final projection, for a GPTQ-rounded
        recipe; off with reorder_residual. Rounded to nearest, the rotated SmolLM2 lost more (x1.26 ->
        x1.78 in blocks of 128, x1.22 -> x1.53 in blocks of 32; README, Quantization)."""
        if self.rotate_residual is not None:
            return self
        rounded = self.algorithm in GPTQ_ROUNDED and not self.reorder_residual
        return replace(self, rotate_residual=applies and rounded)

    def code_bits(self) -> set[int]:
        """Every code width the recipe can give a weight."""
        per_class = (self.embedding_bits, self.lm_head_bits, self.attention_bits, self.mlp_bits)
        chosen = {self.bits, *per_class, self.edge_down_bits, self.key_bits}
        return {b for b in chosen if b} | {o["bits"] for o in self.overrides.values() if "bits" in o}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Recipe:
        """The recipe an artifact's manifest records (without what QAD added to the record)."""
        known = {f.name for f in fields(cls)}
        recorded = {k: v for k, v in record.items() if k in known}
        recorded.setdefault("edge_down_bits", None)  # an artifact from before edge_down_bits
        recorded.setdefault("key_bits", None)  # ... or before key_bits
        recorded.setdefault("rotate_residual", False)  # ... or before rotate_residual
        recorded.setdefault("whole_groups", False)  # ... or before whole_groups
        return cls(**recorded)


DEFAULT_RECIPE = Recipe()
