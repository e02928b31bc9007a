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


def _stored_bytes(rows: int, columns: int, record: dict) -> int:
    """A quantized tensor's bytes as MatMulNBits stores it: packed codes of padded blocks, a float16
    scale and a packed integer zero point per block (quant.tensor.QuantizedTensor.nbytes)."""
    bits, group = record["bits"], record["group_size"]
    blocks = -(-columns // group)
    zeros = 0 if record.get("symmetric") else rows * -(-blocks * bits // 8)
    return rows * blocks * group * bits // 8 + rows * blocks * 2 + zeros


def bytes_per_token(manifest: Manifest) -> int:
    """The weight bytes one decode step reads: all of them, but of an embedding table that the
    lm_head does not also read only the token's row."""
    spec = manifest.spec
    total = manifest.quantization.weight_bytes
    if spec is None:
        return total
    layers = manifest.quantization.layers
    head_reads_table = spec.tie_word_embeddings and LM_HEAD not in layers
    if head_reads_table:
        return total
    record = layers.get(EMBEDDING)
    rows, columns = spec.vocab_size, spec.hidden_size
    table = _stored_bytes(rows, columns, record) if record else rows * columns * 2
    return total - table + table // rows


def kv_bytes_per_1k(manifest: Manifest) -> int:
    spec = manifest.spec
    if spec is None:
        return 0
    return 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * 4 * 1000  # float32 keys and values


def estimate(manifest: Manifest, bandwidth: float) -> Estimate:
    per_token = bytes_per_token(manifest)
    speed = bandwidth * 1e9 / per_token if bandwidth > 0 else None
    return Estimate(per_token, kv_bytes_per_1k(manifest), speed, bandwidth)


def installed_bytes(wheels: Path) -> int:
    """What the wheels in `wheels` take once installed: their files unpacked (pip adds bytecode)."""
    total = 0
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            total += sum(entry.file_size for entry in archive.infolist())
    return total
