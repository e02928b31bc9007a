"""edgekit as a pure-Python wheel, written from the installed package's own files: no build tools,
no network, and it works from an editable install as well as from a wheel install."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from dataclasses import dataclass, field
from importlib.metadata import distribution
from pathlib import Path

from ..errors import EdgekitError
from .markers import Requirement

PACKAGE = Path(__file__).resolve().parents[1]  # the installed `edgekit` folder
TAG = "py3-none-any"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # a fixed time in every entry: the same files give the same wheel


@dataclass(frozen=True)
class Project:
    """What the wheel says about edgekit, read from the installed distribution."""

    version: str
    summary: str
    requires_python: str
    runtime_requirements: tuple[str, ...]  # Requires-Dist without the extras
    console_scripts: tuple[tuple[str, str], ...]  # (name, "module:function")
    # optional parts a device can get (`edgekit bundle --with NAME`): Requires-Dist lines per extra,
    # markers kept; extras that pull in edgekit's own other extras (dev, optimum) are left out
    extras: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def wheel_name(self) -> str:
        return f"edgekit-{self.version}-{TAG}.whl"


def installed_project() -> Project:
    dist = distribution("edgekit")
    runtime = tuple(
        text
        for text in dist.requires or ()
        if (marker := Requirement(text).marker) is None or "extra" not in str(marker)
    )
    scripts = tuple((e.name, e.value) for e in dist.entry_points if e.group == "console_scripts")
    extras: dict[str, tuple[str, ...]] = {}
    for name in dist.metadata.get_all("Provides-Extra") or ():
        needs = tuple(t for t in dist.requires or () if f'extra == "{name}"' in str(Requirement(t).marker))
        if needs and not any(Requirement(t).name == "edgekit" for t in needs):
            extras[name] = needs
    return Project(
        dist.version,
        dist.metadata.get("Summary", ""),
        dist.metadata.get("Requires-Python", ""),
        runtime,
        scripts,
        extras,
    )


def package_files() -> list[Path]:
    """Every file of the package, package data included; no bytecode."""
    return sorted(
        p
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.relative_to(PACKAGE).parts and p.suffix not in (".pyc", ".pyo")
    )


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _metadata(project: Project) -> str:
    lines = ["Metadata-Version: 2.1", "Name: edgekit", f"Version: {project.version}"]
    if project.summary:
        lines.append(f"Summary: {project.summary}")
    if project.requires_python:
        lines.append(f"Requires-Python: {project.requires_python}")
    lines += [f"Requires-Dist: {r}" for r in project.runtime_requirements]
    return "\n".join(lines) + "\n"


def build_wheel(folder: Path, project: Project | None = None) -> Path:
    """Write edgekit-VERSION-py3-none-any.whl into `folder`; returns its path."""
    project = project or installed_project()
    info = f"edgekit-{project.version}.dist-info"
    entries = [(f"edgekit/{p.relative_to(PACKAGE).as_posix()}", p.read_bytes()) for p in package_files()]
    entries.append((f"{info}/METADATA", _metadata(project).encode()))
    wheel_file = f"Wheel-Version: 1.0\nGenerator: edgekit bundle\nRoot-Is-Purelib: true\nTag: {TAG}\n"
    entries.append((f"{info}/WHEEL", wheel_file.encode()))
    if project.console_scripts:
        scripts = "".join(f"{name} = {value}\n" for name, value in project.console_scripts)
        entries.append((f"{info}/entry_points.txt", f"[console_scripts]\n{scripts}".encode()))
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in entries)
    entries.append((f"{info}/RECORD", (record + f"{info}/RECORD,,\n").encode()))
    path = folder / project.wheel_name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in entries:
            entry = zipfile.ZipInfo(name, _EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(entry, data)
    return path


def check_wheel(path: Path) -> None:
    """Every entry is in RECORD with its hash and size, and RECORD names nothing else."""
    with zipfile.ZipFile(path) as wheel:
        names = set(wheel.namelist())
        records = [n for n in names if n.endswith(".dist-info/RECORD")]
        if len(records) != 1:
            raise EdgekitError(f"{path}: expected one .dist-info/RECORD, found {len(records)}")
        listed = set()
        for line in wheel.read(records[0]).decode().splitlines():
            name, digest, size = line.rsplit(",", 2)
            listed.add(name)
            if name == records[0]:
                continue
            data = wheel.read(name) if name in names else None
            if data is None or digest != _record_hash(data) or size != str(len(data)):
                raise EdgekitError(f"{path}: {name} does not match its RECORD line; the wheel is damaged")
        if listed != names:
            raise EdgekitError(f"{path}: RECORD and the wheel's files differ: {sorted(listed ^ names)[:3]}")
