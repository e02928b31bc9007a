"""Artifact directories: written to a temporary folder, verified, then renamed into place; read
back with every file's sha256 checked against the manifest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import EdgekitError

MANIFEST = "edgekit.json"
FORMAT_VERSION = 1


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


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {"format_version": FORMAT_VERSION, **manifest, "files": {f: sha256(folder / f) for f in files}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def read_manifest(folder: Path, check_files: bool = True) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise EdgekitError(f"{folder}: no such artifact folder; export one with `edgekit export`")
    if not path.is_file():
        raise EdgekitError(f"{folder}: not an edgekit artifact (no {MANIFEST}); export one with `edgekit export`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgekitError(f"{path}: not valid JSON ({exc}); re-export the artifact") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise EdgekitError(
            f"{path}: artifact format version {version} is not supported by this edgekit "
            f"(reads version {FORMAT_VERSION}); re-export it or upgrade edgekit"
        )
    if check_files:
        for name, digest in manifest.get("files", {}).items():
            f = folder / name
            if not f.is_file():
                raise EdgekitError(f"{f}: listed in {MANIFEST} but missing; the artifact is incomplete, re-export it")
            if sha256(f) != digest:
                raise EdgekitError(
                    f"{f}: sha256 differs from {MANIFEST}; the file was changed or damaged, re-export the artifact"
                )
    return manifest
