"""Recipes: which bits, group size and algorithm each weight gets."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import EdgekitError
from .tensor import check_bits_and_group

# "awq-gptq": AWQ's activation-aware scaling, then GPTQ's error-compensating rounding
ALGORITHMS = ("rtn", "hqq", "awq", "gptq", "awq-gptq")
CALIBRATED = ("awq", "gptq", "awq-gptq")
SCALED = ("awq", "awq-gptq")
GPTQ_ROUNDED = ("gptq", "awq-gptq")
TENSOR_CLASSES = ("embedding", "lm_head", "attention", "mlp")


def tensor_class(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "embedding"
    if name == "lm_head.weight":
        return "lm_head"
    return "attention" if ".self_attn." in name else "mlp"


@dataclass(frozen=True)
class TensorRecipe:
    """What one weight gets."""

    bits: int
    group_size: int
    algorithm: str
    symmetric: bool


@dataclass(frozen=True)
class Recipe:
    """Defaults: the algorithms measured best on SmolLM2-135M (and on its off-grid copy) within the
    bytes of onnxruntime-genai's int4 export (bench/quant_quality.py): AWQ scaling + GPTQ rounding,
    4-bit blocks of 64 with zero points, and a 4-bit embedding in the same blocks shared with the
    tied lm_head, rounded by GPTQ on the lm_head's calibration inputs. Blocks of 64 rather than 32:
    ONNX Runtime's int8-compute kernels keep a float32 scale and block sum per block, so blocks of
    32 cost 6 bits per weight in memory and 64 cost 5, and decode reads every weight once per token
    (the README's Results section has both)."""

    algorithm: str = "awq-gptq"
    bits: int = 4
    group_size: int = 64
    symmetric: bool = False
    # per tensor class; None = `bits`. The tied embedding doubles as the lm_head and uses embedding_bits.
    embedding_bits: int | None = 4
    lm_head_bits: int | None = 8
    attention_bits: int | None = None
    mlp_bits: int | None = None
    embedding_group_size: int | None = None  # None = group_size
    embedding_symmetric: bool = False
    # None: GPTQ under a calibrated recipe, on the lm_head's inputs, which a tied embedding serves
    # too (an untied embedding, a lookup table with no input activations, then gets HQQ); else the
    # recipe's algorithm.
    embedding_algorithm: str | None = None
    # glob over weight names -> {"bits": .., "group_size": .., "algorithm": .., "symmetric": ..}
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration_samples: int = 16
    calibration_window: int = 256

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise EdgekitError(f"unknown quantization algorithm '{self.algorithm}'; use one of {', '.join(ALGORITHMS)}")
        check_bits_and_group(self.bits, self.group_size)
        for key in ("embedding_bits", "lm_head_bits", "attention_bits", "mlp_bits"):
            value = getattr(self, key)
            if value is not None:
                check_bits_and_group(value, self.group_size)
        if self.embedding_group_size is not None:
            check_bits_and_group(self.bits, self.embedding_group_size)
        for pattern, values in self.overrides.items():
            unknown = set(values) - {"bits", "group_size", "algorithm", "symmetric"}
            if unknown:
                raise EdgekitError(
                    f"override '{pattern}': unknown keys {sorted(unknown)}; "
                    "allowed: bits, group_size, algorithm, symmetric"
                )

    @property
    def needs_calibration(self) -> bool:
        return (
            self.algorithm in CALIBRATED
            or self.embedding_algorithm in CALIBRATED
            or any(o.get("algorithm") in CALIBRATED for o in self.overrides.values())
        )

    def for_tensor(self, name: str) -> TensorRecipe:
        cls = tensor_class(name)
        bits = {
            "embedding": self.embedding_bits,
            "lm_head": self.lm_head_bits,
            "attention": self.attention_bits,
            "mlp": self.mlp_bits,
        }[cls] or self.bits
        group = self.embedding_group_size if cls == "embedding" and self.embedding_group_size else self.group_size
        algorithm = self.algorithm
        if cls == "embedding":
            algorithm = self.embedding_algorithm or ("gptq" if algorithm in CALIBRATED else algorithm)
        symmetric = self.embedding_symmetric if cls == "embedding" else self.symmetric
        chosen = TensorRecipe(bits, group, algorithm, symmetric)
        for pattern, values in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name.removesuffix(".weight"), pattern):
                chosen = replace(chosen, **values)
        check_bits_and_group(chosen.bits, chosen.group_size)
        if chosen.algorithm not in ALGORITHMS:
            raise EdgekitError(f"unknown quantization algorithm '{chosen.algorithm}' for {name}")
        return chosen

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_RECIPE = Recipe()
