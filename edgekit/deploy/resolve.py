"""The runtime's packages for the target, resolved by pip against the package index: exact versions
and the sha256 of the wheel each one installs from. Resolving is also the check that every package
has a wheel for the target: pip is told to take wheels only, for the target's platform and Python.

pip evaluates environment markers for the machine it runs on, not the target, so the resolved set
is walked again from the root requirements with the target's markers: packages the target does not
need are dropped, and packages only the target needs are added and resolved again."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..errors import EdgekitError
from .markers import Requirement, applies, canonical, without_marker
from .target import Target

OnLine = Callable[[str], None]


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    sha256: str
    filename: str
    requires: tuple[str, ...] = ()  # Requires-Dist, markers included
    via: tuple[str, ...] = ()  # who needs it on the target: "edgekit" or resolved packages

    @property
    def key(self) -> str:
        return canonical(self.name)


def require_pip() -> None:
    if importlib.util.find_spec("pip") is None:
        raise EdgekitError(f"bundling resolves the device's packages with pip, which is not installed: {pip_hint()}")
    try:
        major = int(version("pip").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return
    if major < 23:
        raise EdgekitError(f"bundling needs pip 23 or newer (this is pip {version('pip')}): {pip_hint()}")


def pip_hint() -> str:
    return f"{sys.executable} -m ensurepip --upgrade, or {sys.executable} -m pip install --upgrade pip"


def run_pip(args: list[str], on_line: OnLine | None = None) -> tuple[int, list[str]]:
    """Run this Python's pip; its output lines go to `on_line` as they come and are returned."""
    command = [sys.executable, "-m", "pip", *args, "--no-input", "--disable-pip-version-check", "--progress-bar=off"]
    lines: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if on_line:
                on_line(lines[-1])
    return process.returncode, lines


def target_options(target: Target) -> list[str]:
    """pip options that select wheels for the target instead of this machine."""
    platforms = [f"--platform={tag}" for tag in target.platform_tags()]
    return ["--only-binary=:all:", "--implementation=cp", f"--python-version={target.python}", *platforms]


def resolve(
    requirements: list[str], target: Target, on_line: OnLine | None = None, extras: tuple[str, ...] = ()
) -> list[Pin]:
    """Pins for edgekit's `requirements` (those of `extras` too) and everything they need on the
    target, sorted by name."""
    require_pip()
    environment = target.marker_environment()
    roots = [r for r in map(Requirement, requirements) if applies(r, environment, extras)]
    target_only: list = []
    for _ in range(8):  # each pass adds what only the target needs; real dependency trees settle in one or two
        resolved = _pip_resolve([without_marker(r) for r in roots + target_only], target, on_line)
        pins, missing = _walk(roots, resolved, environment)
        if not missing:
            return sorted(pins, key=lambda p: p.key)
        target_only += missing
    raise EdgekitError(f"resolving for {target.describe()} did not settle; requirements: {', '.join(requirements)}")


def _pip_resolve(requirements: list[str], target: Target, on_line: OnLine | None) -> dict[str, Pin]:
    with tempfile.TemporaryDirectory(prefix="edgekit-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        args = ["install", "--dry-run", "--ignore-installed", f"--report={report}", *target_options(target)]
        code, lines = run_pip([*args, *requirements], on_line)
        if code != 0 or not report.is_file():
            raise explain_pip_failure(lines, target)
        data = json.loads(report.read_text())
    pins = {}
    for item in data["install"]:
        metadata, download = item["metadata"], item["download_info"]
        digest = download.get("archive_info", {}).get("hashes", {}).get("sha256")
        if digest is None:
            raise EdgekitError(f"pip resolved {metadata['name']} from {download['url']}, which has no sha256")
        pin = Pin(
            metadata["name"],
            metadata["version"],
            digest,
            download["url"].rsplit("/", 1)[-1],
            tuple(metadata.get("requires_dist") or ()),
        )
        pins[pin.key] = pin
    return pins


def _walk(roots: list, resolved: dict[str, Pin], environment: dict[str, str]) -> tuple[list[Pin], list]:
    """The resolved pins the target needs, each with who needs it, and the requirements the target
    needs that pip (evaluating markers for this machine) did not resolve or resolved too old."""
    via: dict[str, list[str]] = {}
    missing: list = []
    done: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[Any, str]] = [(r, "edgekit") for r in roots]
    while todo:
        requirement, parent = todo.pop()
        key = canonical(requirement.name)
        pin = resolved.get(key)
        if pin is None or not requirement.specifier.contains(pin.version, prereleases=True):
            missing.append(requirement)
            continue
        needers = via.setdefault(key, [])
        if parent not in needers:
            needers.append(parent)
        state = (key, frozenset(requirement.extras))
        if state in done:
            continue
        done.add(state)
        for text in pin.requires:
            dependency = Requirement(text)
            if applies(dependency, environment, requirement.extras):
                todo.append((dependency, pin.name))
    pins = [_with_via(resolved[key], sorted(needers)) for key, needers in via.items()]
    return pins, missing


def _with_via(pin: Pin, via: list[str]) -> Pin:
    return Pin(pin.name, pin.version, pin.sha256, pin.filename, pin.requires, tuple(via))


_NETWORK = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "ConnectTimeout",
    "ReadTimeout",
    "ProxyError",
    "SSLError",
)
_NO_VERSION = re.compile(
    r"Could not find a version that satisfies the requirement (\S+)(?: \(from (?!versions:)([^)]*)\))?"
)
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")


def explain_pip_failure(lines: list[str], target: Target) -> EdgekitError:
    """One line out of pip's failure: which package has no wheel for the target, or why pip failed."""
    errors = [line.removeprefix("ERROR: ").strip() for line in lines if line.startswith("ERROR: ")]
    text = "\n".join(lines)
    first = errors[0] if errors else (lines[-1].strip() if lines else "no output")
    if any(sign in text for sign in _NETWORK):
        return EdgekitError(
            f"pip could not reach the package index to resolve the runtime for {target.name} ({first}); "
            "bundling needs the index (PyPI or pip's configured index): check the network and `pip config list`"
        )
    found = _NO_VERSION.search(text) or _NO_MATCH.search(text)
    if found:
        name = re.match(r"[A-Za-z0-9._-]+", found.group(1))
        package = name.group(0) if name else found.group(1)
        parent = found.group(2) if found.re is _NO_VERSION and found.group(2) else None
        needed = f" (needed by {parent})" if parent else ""
        return EdgekitError(
            f"{package}{needed} has no wheel for {target.describe()} ({target.name}) on the package index, "
            f"so the device cannot install it; bundle for the Python the device runs with --python "
            f"(the profile's is {target.default_python})"
        )
    return EdgekitError(f"pip cannot resolve edgekit's runtime for {target.describe()} ({target.name}): {first}")


def download_wheels(requirements_file: Path, pins: list[Pin], target: Target, folder: Path, on_line: OnLine) -> None:
    """Every pinned wheel into `folder`, checked against its pinned sha256."""
    from ..artifact import sha256

    folder.mkdir(parents=True, exist_ok=True)
    args = ["download", "--no-deps", "--require-hashes", f"--dest={folder}", f"--requirement={requirements_file}"]
    code, lines = run_pip([*args, *target_options(target)], on_line)
    if code != 0 and any("DO NOT MATCH THE HASHES" in line for line in lines):
        package = next((line.split()[0] for line in lines if line.startswith("    ") and " from " in line), "a wheel")
        raise EdgekitError(
            f"{package}: the package index now serves a file whose sha256 differs from the one resolved "
            "moments ago; run `edgekit bundle` again"
        )
    if code != 0:
        raise explain_pip_failure(lines, target)
    digests = {sha256(f): f.name for f in folder.iterdir() if f.suffix == ".whl"}
    for pin in pins:
        if pin.sha256 not in digests:
            raise EdgekitError(f"{folder}: pip did not download the pinned wheel of {pin.name} {pin.version}")


def requirements_text(pins: list[Pin], header: list[str]) -> str:
    """A pip requirements file: exact versions, one sha256 each (pip's hash-checking mode)."""
    lines = [f"# {line}" if line else "#" for line in header]
    for pin in pins:
        lines.append(f"{pin.name}=={pin.version} \\")
        lines.append(f"    --hash=sha256:{pin.sha256}")
        if pin.via:
            lines.append(f"    # via {', '.join(pin.via)}")
    return "\n".join(lines) + "\n"
