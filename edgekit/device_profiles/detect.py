"""What this machine is, and which profile fits it.

Facts are gathered once into a HostFacts value (tests build their own), then each profile's
[detect] table is checked against them. The best match is the one that matched the most
conditions: a Raspberry Pi 5 matches both `raspberry-pi-5` and `generic-arm64-cpu`, and the
first one names more of it.
"""

from __future__ import annotations

import importlib.util
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .profile import DeviceProfile

_ARCH = {"amd64": "x86_64", "x86_64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


@dataclass(frozen=True)
class HostFacts:
    os: str
    arch: str
    device_tree_model: str = ""
    cpu_name: str = ""
    cpu_features: frozenset[str] = field(default_factory=frozenset)
    providers: tuple[str, ...] = ()
    metal: bool = False
    mlx: bool = False

    def summary(self) -> str:
        parts = [f"{self.os} {self.arch}"]
        if self.device_tree_model:
            parts.append(self.device_tree_model)
        if self.cpu_name:
            parts.append(self.cpu_name)
        parts.append("providers: " + ", ".join(self.providers))
        if self.metal:
            parts.append("Metal")
        if self.mlx:
            parts.append("mlx installed")
        return "; ".join(parts)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return ""


def _linux_cpu() -> tuple[str, frozenset[str]]:
    name, features = "", set()
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not name:
            name = value.strip()
        elif key in ("flags", "features"):
            features.update(value.split())
    return name, frozenset(features)


def _darwin_cpu() -> str:
    import subprocess

    try:
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return platform.processor()


def _windows_cpu() -> str:
    try:
        import winreg

        key = winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"HARDWARE\DESCRIPTION\System\CentralProcessor\0")
        return str(winreg.QueryValueEx(key, "ProcessorNameString")[0]).strip()
    except OSError:
        return platform.processor()


def gather() -> HostFacts:
    """The facts about the machine this runs on."""
    import onnxruntime

    os_name = {"linux": "linux", "darwin": "darwin", "win32": "windows"}.get(sys.platform, sys.platform)
    arch = _ARCH.get(platform.machine().lower(), platform.machine().lower())
    features: frozenset[str] = frozenset()
    if os_name == "linux":
        cpu, features = _linux_cpu()
    elif os_name == "darwin":
        cpu = _darwin_cpu()
    else:
        cpu = _windows_cpu()
    return HostFacts(
        os=os_name,
        arch=arch,
        device_tree_model=_read("/proc/device-tree/model"),
        cpu_name=cpu,
        cpu_features=features,
        providers=tuple(onnxruntime.get_available_providers()),
        metal=os_name == "darwin" and arch == "aarch64",
        mlx=importlib.util.find_spec("mlx") is not None,
    )


@dataclass(frozen=True)
class Match:
    profile: DeviceProfile
    matched: bool
    reasons: tuple[str, ...]  # why it matched, or the first reason it did not
    score: int


def _contains_any(value: str, wanted: tuple[str, ...]) -> bool:
    return any(w.lower() in value.lower() for w in wanted)


def match(profile: DeviceProfile, facts: HostFacts) -> Match:
    d = profile.detect
    # (listed in the profile, holds here, what the profile asks for, what this machine has)
    checks = [
        (d.os, lambda: facts.os in d.os, "os " + "/".join(d.os), facts.os),
        (d.arch, lambda: facts.arch in d.arch, "arch " + "/".join(d.arch), facts.arch),
        (
            d.device_tree_model,
            lambda: _contains_any(facts.device_tree_model, d.device_tree_model),
            "device tree model " + " or ".join(repr(m) for m in d.device_tree_model),
            repr(facts.device_tree_model),
        ),
        (
            d.cpu_name,
            lambda: _contains_any(facts.cpu_name, d.cpu_name),
            "cpu " + " or ".join(repr(c) for c in d.cpu_name),
            repr(facts.cpu_name),
        ),
        (
            d.cpu_features,
            lambda: {f.lower() for f in d.cpu_features} <= facts.cpu_features,
            "cpu features " + ", ".join(d.cpu_features),
            "missing " + ", ".join(sorted({f.lower() for f in d.cpu_features} - facts.cpu_features)),
        ),
        (
            d.providers,
            lambda: set(d.providers) <= set(facts.providers),
            ", ".join(d.providers),
            "available: " + ", ".join(facts.providers),
        ),
        (
            d.metal is not None,
            lambda: facts.metal == d.metal,
            "Metal" if d.metal else "no Metal",
            "Metal" if facts.metal else "no Metal",
        ),
        (
            d.mlx is not None,
            lambda: facts.mlx == d.mlx,
            "mlx installed" if d.mlx else "mlx not installed",
            "installed" if facts.mlx else "not installed",
        ),
    ]
    reasons = []
    for listed, holds, wanted, have in checks:
        if not listed:
            continue
        if not holds():
            return Match(profile, False, (f"needs {wanted} ({have})",), 0)
        reasons.append(wanted)
    return Match(profile, True, tuple(reasons), len(reasons))


def best_match(profiles: list[DeviceProfile], facts: HostFacts) -> Match | None:
    """The matching profile that names most of this machine, among those `auto` may pick."""
    matches = [m for m in (match(p, facts) for p in profiles if p.auto) if m.matched]
    return max(matches, key=lambda m: m.score, default=None)
