"""What a bundle's README tells its user before they copy it: the decode speed to expect on the board
(an estimate: decoding one token reads every weight once, so memory bandwidth bounds it) and the
space the installed runtime takes there."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..artifact import Manifest

EMBEDDING = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"


@dataclass(frozen=True)
class Estimate:
    bytes_per_token: int  # weights one decode step reads
    kv_bytes_per_1k: int  # what the KV cache adds per 1000 tokens of context
    tokens_per_second: float | None  # at the start of a conversation; None: the board's bandwidth is unknown
    bandwidth: float  # GB/s, from the profile


def _table_bytes(rows: int, columns: int, record: dict | None) -> int:
    """An embedding table's bytes as stored: packed codes of padded blocks, a float16 scale and at
    most a float16 zero point per block; float16 when it is not quantized."""
    if record is None:
        return rows * columns * 2
    bits, group = record["bits"], record["group_size"]
    blocks = -(-columns // group)
    zeros = 0 if record.get("symmetric") else rows * blocks * 2
    return rows * blocks * group * bits // 8 + rows * blocks * 2 + zeros


def bytes_per_token(manifest: Manifest, weight_file_bytes: int) -> int:
    """The bytes one decode step reads from the weight file: all of it, but of an embedding table that
    the lm_head does not also read only the token's row."""
    spec = manifest.spec
    if spec is None:
        return weight_file_bytes
    layers = manifest.quantization.layers
    if spec.tie_word_embeddings and LM_HEAD not in layers:
        return weight_file_bytes
    table = _table_bytes(spec.vocab_size, spec.hidden_size, layers.get(EMBEDDING))
    return weight_file_bytes - table + table // spec.vocab_size


def kv_bytes_per_1k(manifest: Manifest) -> int:
    spec = manifest.spec
    if spec is None:
        return 0
    return 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * 4 * 1000  # float32 keys and values


def estimate(manifest: Manifest, weight_file_bytes: int, bandwidth: float) -> Estimate:
    per_token = bytes_per_token(manifest, weight_file_bytes)
    speed = bandwidth * 1e9 / per_token if bandwidth > 0 else None
    return Estimate(per_token, kv_bytes_per_1k(manifest), speed, bandwidth)


def installed_bytes(wheels: Path) -> int:
    """What the wheels in `wheels` take once installed: their files unpacked (pip adds bytecode)."""
    total = 0
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            total += sum(entry.file_size for entry in archive.infolist())
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
