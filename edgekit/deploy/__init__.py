"""Deploying artifacts to devices: `edgekit bundle` makes a folder that serves an artifact on a
Raspberry Pi (or another profile with a [bundle] table)."""

from __future__ import annotations

from .bundle import BundleResult, Step, build_bundle, check_artifact
from .target import Target, bundle_target, bundle_target_names

__all__ = ["BundleResult", "Step", "Target", "build_bundle", "bundle_target", "bundle_target_names", "check_artifact"]
