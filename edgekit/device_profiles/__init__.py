"""Device profiles shipped with edgekit (one TOML file each), loading by name or path, and detection."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from .detect import HostFacts, Match, best_match, gather, match
from .profile import DeviceProfile, ExportSettings, ProfileError, Provider, RuntimeSettings, parse_profile, read_profile


@lru_cache(maxsize=1)
def shipped_profiles() -> tuple[DeviceProfile, ...]:
    folder = resources.files(__name__)
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".toml")), key=lambda f: f.name)
    return tuple(parse_profile(f.read_text(encoding="utf-8"), f"{__name__}/{f.name}") for f in files)


def profile_names() -> list[str]:
    return [p.name for p in shipped_profiles()]


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A shipped profile by name, a user's profile file (a path ending in .toml), or "auto": the
    shipped profile that fits this machine."""
    text = str(name_or_path)
    if text == "auto":
        return detect().profile
    if text.endswith(".toml") or Path(text).is_file():
        return read_profile(text)
    for profile in shipped_profiles():
        if profile.name == text:
            return profile
    raise ProfileError(f"no device profile named '{text}'; shipped profiles: {', '.join(profile_names())}")


def detect(facts: HostFacts | None = None) -> Match:
    """The shipped profile that fits this machine best (the generic CPU ones always fit their arch)."""
    facts = facts or gather()
    found = best_match(list(shipped_profiles()), facts)
    if found is None:
        raise ProfileError(
            f"no device profile fits this machine ({facts.summary()}); pass one with --profile NAME or a .toml path"
        )
    return found


__all__ = [
    "DeviceProfile",
    "ExportSettings",
    "HostFacts",
    "Match",
    "ProfileError",
    "Provider",
    "RuntimeSettings",
    "best_match",
    "detect",
    "gather",
    "load_profile",
    "match",
    "profile_names",
    "shipped_profiles",
]
