"""`edgekit.load(...)`: an artifact and a device profile's settings opened as an Engine, or as a
ParallelEngine that answers several prompts at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifact import Manifest, read_manifest
from ..device_profiles import DeviceProfile, RuntimeSettings, load_profile
from ..errors import EdgekitError
from .draft import check_draft, draft_cost
from .engine import Engine, GenerationConfig
from .loader import DEFAULT_PROVIDERS, load_runtime
from .parallel import ParallelEngine
from .speculative import DraftModel

RUNTIME_OPTIONS = ("threads", "max_context", "providers", "prefill_chunk", "huge_pages", "parallel", "kv_cache_mb")
ENGINE_OPTIONS = ("prefix_cache_mb",)


def load(
    artifact: str | Path,
    profile: str | Path | None = "auto",
    *,
    generation: GenerationConfig | None = None,
    draft: str | Path | None = None,
    **overrides: Any,
) -> Engine:
    """Load an exported artifact (or, for checking, a source checkpoint on the numpy reference).

    profile: "auto" (detect this machine), a shipped profile name, a path to a .toml file, or None
    (the artifact flavor's defaults). draft: a second, smaller artifact with the same tokenizer for
    speculative decoding (default: the profile's [runtime] draft); with one, speculation="draft"
    is the default. overrides: threads, max_context, providers, prefill_chunk,
    huge_pages; parallel=N returns an engine that answers N prompts at once (continuous batching),
    their KV cache within kv_cache_mb, with a prefix cache of prefix_cache_mb shared by them.
    """
    unknown = sorted(set(overrides) - set(RUNTIME_OPTIONS) - set(ENGINE_OPTIONS))
    if unknown:
        options = ", ".join(RUNTIME_OPTIONS + ENGINE_OPTIONS)
        raise EdgekitError(f"unknown load option {unknown[0]!r}; options: {options}")
    chosen = None if profile is None else load_profile(profile)
    runtime_settings = chosen.runtime if chosen is not None else RuntimeSettings()
    settings = _settings(Path(artifact), chosen, profile, overrides)
    prefix_cache_mb = settings.pop("prefix_cache_mb", runtime_settings.prefix_cache_mb)
    if draft is None and chosen is not None and chosen.runtime.draft:
        draft = _profile_path(chosen, chosen.runtime.draft)
    if settings.get("parallel") is not None:
        if draft is not None:
            raise EdgekitError(
                f"{draft}: a draft model speculates for one sequence at a time; load without parallel= "
                "to use it, or without draft= (and without the profile's [runtime] draft) to batch"
            )
        settings.setdefault("kv_cache_mb", runtime_settings.kv_cache_mb)
        return ParallelEngine(load_runtime(artifact, **settings), chosen, generation, prefix_cache_mb << 20)
    loaded = load_runtime(artifact, **settings)
    helper = None
    if draft is not None:
        draft_settings = _settings(Path(draft), chosen, profile, overrides)
        draft_settings.pop("prefix_cache_mb", None)
        draft_settings.pop("kv_cache_mb", None)
        own = _peek_manifest(Path(draft))  # a draft with a shorter context proposes up to its end
        draft_settings["max_context"] = min(
            loaded.runtime.max_context, own.max_context if own else loaded.runtime.max_context
        )
        small = load_runtime(draft, **draft_settings)
        check_draft(loaded, small, artifact, draft)
        helper = DraftModel(small.runtime, draft_cost(loaded, small))
        if generation is None:
            generation = GenerationConfig(speculation="draft")
    return Engine(loaded, chosen, generation, helper)


def _settings(artifact: Path, chosen: DeviceProfile | None, profile: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The runtime settings for `artifact`: the profile's, then the caller's overrides."""
    settings: dict[str, Any] = {}
    if chosen is not None:
        rt = chosen.runtime
        settings = {
            "threads": rt.threads,
            "max_context": rt.max_context,
            "prefill_chunk": rt.prefill_chunk,
            "huge_pages": rt.huge_pages,
        }
        manifest = _peek_manifest(artifact)
        flavor = manifest.flavor if manifest else None
        if flavor is None or flavor == chosen.export.flavor:
            settings["providers"] = [p.for_onnxruntime() for p in rt.providers]
        elif profile != "auto":
            raise EdgekitError(
                f"{artifact} is a {flavor} artifact but profile {chosen.name} runs {chosen.export.flavor} ones; "
                f"re-export with --profile {chosen.name}, or load with profile=None"
            )
        else:  # a detected profile for another flavor: run the artifact the way its flavor runs
            settings["providers"] = DEFAULT_PROVIDERS.get(flavor)
        if manifest is not None:  # the profile's context is a wish the artifact caps
            settings["max_context"] = min(settings["max_context"], manifest.max_context)
    settings.update(overrides)
    return settings


def _profile_path(profile: DeviceProfile, value: str) -> Path:
    """A path a profile names, relative to the profile's own file."""
    path = Path(value).expanduser()
    return path if path.is_absolute() or profile.path is None else profile.path.parent / path


def _peek_manifest(folder: Path) -> Manifest | None:
    """The manifest without checking the files (load_runtime checks them and reports)."""
    try:
        return read_manifest(folder, check_files=False)
    except EdgekitError:
        return None
