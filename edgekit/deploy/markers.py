"""PEP 508 requirements and markers, evaluated for the target device instead of this machine."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # `packaging` comes with onnxruntime; pip (which bundling needs anyway) vendors it too
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]

__all__ = ["InvalidRequirement", "Requirement", "applies", "canonical", "without_marker"]


def canonical(name: str) -> str:
    return str(canonicalize_name(name))


def applies(requirement: Any, environment: dict[str, str], extras: Iterable[str] = ()) -> bool:
    """Whether `requirement` holds on a device with `environment`, for a package installed with `extras`."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**environment, "extra": extra}) for extra in ("", *extras))


def without_marker(requirement: Any) -> str:
    """The requirement as pip should get it once its marker has been evaluated for the device."""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return f"{requirement.name}{extras}{requirement.specifier}"
