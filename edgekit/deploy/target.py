"""Bundle targets: the device profiles with a [bundle] table, and what pip needs to pick wheels for
them (CPython version, manylinux platform tags, the marker environment of the device)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..device_profiles import DeviceProfile, load_profile, shipped_profiles
from ..errors import EdgekitError

OLDEST_MANYLINUX = 17  # manylinux_2_17 (= manylinux2014) is the oldest tag aarch64 wheels use


@dataclass(frozen=True)
class Target:
    profile: DeviceProfile
    python: str  # "3.13"
    platform: str  # the newest manylinux tag the device runs, e.g. "manylinux_2_36_aarch64"

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def arch(self) -> str:
        return self.platform.split("_", 3)[3]

    @property
    def default_python(self) -> str:
        return self.profile.bundle.python if self.profile.bundle else self.python

    @property
    def shipped(self) -> bool:
        """A profile that ships with edgekit, so the device knows it by name."""
        return self.profile in shipped_profiles()

    @property
    def profile_option(self) -> str:
        """How `--profile` names this profile on the machine making the bundle."""
        return self.name if self.shipped else str(self.profile.path)

    def platform_tags(self) -> list[str]:
        """Every manylinux tag a device with this glibc runs, newest first (pip does not infer the
        older ones from the newest)."""
        newest = int(self.platform.split("_")[2])
        tags = [f"manylinux_2_{minor}_{self.arch}" for minor in range(newest, OLDEST_MANYLINUX - 1, -1)]
        return [*tags, f"manylinux2014_{self.arch}"]

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker values on the device; pip evaluates markers for the machine it runs on."""
        return {
            "implementation_name": "cpython",
            "implementation_version": f"{self.python}.0",
            "os_name": "posix",
            "platform_machine": self.arch,
            "platform_python_implementation": "CPython",
            "platform_release": "",
            "platform_system": "Linux",
            "platform_version": "",
            "python_full_version": f"{self.python}.0",
            "python_version": self.python,
            "sys_platform": "linux",
        }

    def describe(self) -> str:
        return f"Linux {self.arch}, CPython {self.python}"


def bundle_target_names() -> list[str]:
    return [p.name for p in shipped_profiles() if p.bundle is not None]


def bundle_target(name_or_path: str | Path, python: str | None = None) -> Target:
    """The profile to bundle for (a shipped name or a .toml path), with its Python or `python`."""
    text = str(name_or_path)
    names = ", ".join(bundle_target_names())
    if text == "auto":
        raise EdgekitError(f"a bundle is for another machine, so its target cannot be 'auto'; bundle targets: {names}")
    if not (text.endswith(".toml") or Path(text).is_file()) and text not in {p.name for p in shipped_profiles()}:
        raise EdgekitError(f"no device profile named '{text}'; bundle targets: {names}")
    profile = load_profile(text)
    if profile.bundle is None:
        raise EdgekitError(
            f"profile {profile.name} cannot be a bundle target (it has no [bundle] table); bundle targets: {names}"
        )
    python = python or profile.bundle.python
    if not re.fullmatch(r"3\.\d+", python):
        raise EdgekitError(f"--python {python}: expected a CPython version like 3.13")
    return Target(profile, python, profile.bundle.platform)
