"""The artifact folder: its file names, its typed manifest, and how it is written and read.

Exporters write an artifact into a staging folder that is renamed into place only when the export
succeeded; runtimes and the engine read it back, every file's sha256 checked against the manifest.
This module is the one owner of that format, so it sits at the bottom of the package: it imports
only the model description and the errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import EdgekitError
from .spec import ModelSpec

MANIFEST = "edgekit.json"
# 2: model.onnx takes `logits_to_keep` (speculative verify). Version 1 folders still load; an older
# edgekit refuses a version 2 folder with one line instead of ONNX Runtime's missing-input error.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

# ONNX artifacts (cpu / cuda flavors and the optimum graph)
MODEL_FILE = "model.onnx"  # logits of the last position only: what generation needs
# model.onnx's input [1]: logits for that many last positions (1, or a speculative verify's block)
LOGITS_TO_KEEP = "logits_to_keep"
# model.onnx's metadata key, set when its graph decodes a batch of sequences of different lengths in
# one run (earlier graphs folded the batch into the sequence in the embedding's reshapes)
BATCH_METADATA = "edgekit.batched_decode"
ALL_LOGITS_FILE = "model.all_logits.onnx"  # every position (evaluation, onnxruntime-genai), same weights
DATA_FILE = "model.onnx.data"
GENAI_CONFIG_FILE = "genai_config.json"  # onnxruntime-genai's, so its runtime loads the same folder

FORMATS = ("onnx", "mlx")
GRAPHS = ("native", "optimum")  # who built an ONNX graph: edgekit's builder or optimum's exporter


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def staging(output: Path, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside `output`; renamed to `output` only if the block succeeds."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise EdgekitError(f"{output} already exists; choose another output folder or pass --overwrite")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp made it private
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class SourceRecord:
    """Where the artifact's weights came from."""

    path: str
    format: str  # "hf" or "gguf"
    name: str


@dataclass(frozen=True)
class QuantizationRecord:
    recipe: dict[str, Any]  # Recipe.to_dict(), plus what QAD recorded
    layers: dict[str, dict[str, Any]]  # per quantized tensor: bits, group, algorithm, bytes, ...
    bits_per_weight: float
    weight_bytes: int


@dataclass(frozen=True)
class Manifest:
    """`edgekit.json`. `spec` is None for a graph optimum exported (an architecture outside the
    native families), which records `model_type` and `vocab_size` instead."""

    format: str  # one of FORMATS
    flavor: str | None  # ONNX: cpu, cuda or npu; MLX: None
    max_context: int
    source: SourceRecord
    quantization: QuantizationRecord
    verify: dict[str, Any]
    spec: ModelSpec | None = None
    graph: str = "native"  # one of GRAPHS
    profile: str | None = None
    accuracy_level: int | None = None
    kv_bits: int | None = None  # 8 when the graph (ONNX) or the runtime (MLX) keeps the KV cache in int8
    eos_token_ids: tuple[int, ...] = ()
    model_type: str | None = None
    vocab_size: int = 0
    npu: dict[str, Any] | None = None  # the npu flavor's graphs, static sizes and QNN options
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256, filled when written
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not self.vocab_size and self.spec is not None:
            object.__setattr__(self, "vocab_size", self.spec.vocab_size)

    @property
    def kind(self) -> str:
        """What runs it: "mlx", "onnx-cpu", "onnx-cuda", "onnx-npu" or "onnx-optimum"."""
        if self.format == "mlx":
            return "mlx"
        return "onnx-optimum" if self.graph == "optimum" else f"onnx-{self.flavor}"

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        return {"format_version": data.pop("format_version"), **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = MANIFEST) -> Manifest:
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise EdgekitError(
                f"{where}: artifact format version {version} is not supported by this edgekit "
                f"(reads versions {', '.join(map(str, READABLE_VERSIONS))}); re-export it or upgrade edgekit"
            )
        try:
            manifest = cls(
                format=data["format"],
                flavor=data.get("flavor"),
                max_context=int(data["max_context"]),
                source=SourceRecord(**data["source"]),
                quantization=QuantizationRecord(**data["quantization"]),
                verify=dict(data.get("verify") or {}),
                spec=ModelSpec.from_dict(data["spec"]) if data.get("spec") else None,
                graph=data.get("graph", "native"),
                profile=data.get("profile"),
                accuracy_level=data.get("accuracy_level"),
                kv_bits=data.get("kv_bits"),
                eos_token_ids=tuple(data.get("eos_token_ids") or ()),
                model_type=data.get("model_type"),
                vocab_size=int(data.get("vocab_size") or 0),
                npu=data.get("npu"),
                files=dict(data.get("files") or {}),
                format_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgekitError(
                f"{where}: manifest field missing or malformed ({exc!r}); re-export the artifact"
            ) from None
        if manifest.format not in FORMATS or manifest.graph not in GRAPHS:
            raise EdgekitError(
                f"{where}: unknown artifact format '{manifest.format}' / graph '{manifest.graph}'; "
                "re-export it or upgrade edgekit"
            )
        if manifest.spec is None and manifest.graph == "native":
            raise EdgekitError(f"{where}: manifest has no model spec; re-export the artifact")
        return manifest

    def write(self, folder: Path) -> Manifest:
        """Record every file now in `folder` with its sha256 and write the manifest there."""
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
        done = replace(self, files={name: sha256(folder / name) for name in names})
        (folder / MANIFEST).write_text(json.dumps(done.to_dict(), indent=2))
        return done


def _plain(value: Any) -> Any:
    """A manifest field as JSON: records as objects, tuples as lists."""
    if isinstance(value, ModelSpec):
        return value.to_dict()
    if isinstance(value, (SourceRecord, QuantizationRecord)):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    return list(value) if isinstance(value, tuple) else value


def read_manifest(folder: Path, check_files: bool = True) -> Manifest:
    """The manifest of the artifact in `folder`; with check_files, every file it lists is checked
    against its sha256."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise EdgekitError(f"{folder}: no such artifact folder; export one with `edgekit export`")
    if not path.is_file():
        raise EdgekitError(f"{folder}: not an edgekit artifact (no {MANIFEST}); export one with `edgekit export`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgekitError(f"{path}: not valid JSON ({exc}); re-export the artifact") from None
    if not isinstance(data, dict):
        raise EdgekitError(f"{path}: not an edgekit manifest (a JSON object); re-export the artifact")
    manifest = Manifest.from_dict(data, str(path))
    if check_files:
        for name, digest in manifest.files.items():
            f = folder / name
            if not f.is_file():
                raise EdgekitError(f"{f}: listed in {MANIFEST} but missing; the artifact is incomplete, re-export it")
            if sha256(f) != digest:
                raise EdgekitError(
                    f"{f}: sha256 differs from {MANIFEST}; the file was changed or damaged, re-export the artifact"
                )
    return manifest


def is_artifact(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


@dataclass
class ExportResult:
    output: Path
    seconds: float
    megabytes: float
    bits_per_weight: float
    verify: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "seconds": self.seconds,
            "megabytes": self.megabytes,
            "bits_per_weight": self.bits_per_weight,
            "verify": self.verify,
        }


def folder_megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file()) / 1e6
