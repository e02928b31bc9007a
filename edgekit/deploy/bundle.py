"""`edgekit bundle`: a folder to copy to a device that serves an artifact there. It holds the artifact,
the runtime's packages pinned with hashes for the device's platform and Python, edgekit as a wheel,
and the launcher files. Checked before anything is written (artifact, target, resolution), written
into a temporary folder beside the output, verified, then renamed into place."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..artifact import MANIFEST, Manifest, read_manifest, staging
from ..errors import EdgekitError
from .estimate import estimate, folder_bytes, installed_bytes
from .launcher import MODEL_FOLDER, SERVICE, Launch, expectations, install_sh, readme, run_sh, systemd_unit
from .markers import Requirement
from .resolve import Pin, download_wheels, requirements_text, resolve
from .target import Target, bundle_target
from .wheel import Project, build_wheel, check_wheel, installed_project

HEAVY = frozenset({"torch", "onnx", "transformers", "optimum"})  # export-time packages a device never needs
FREE_SPACE_MARGIN = 256 << 20  # launcher files, edgekit's wheel and, with --wheels, the runtime's wheels
WHEELS_FOLDER = "wheels"
WEIGHT_FILE = "model.onnx.data"  # every initializer of model.onnx and model.all_logits.onnx
CUSTOM_PROFILE = "profile.toml"


@dataclass(frozen=True)
class Step:
    """Progress of a long step: `done` of `total` (None: not known), in bytes when unit is "B"."""

    task: str
    done: int
    total: int | None
    item: str = ""
    unit: str = ""


Stage = Callable[[str], None]
OnProgress = Callable[[Step], None]


@dataclass(frozen=True)
class BundleResult:
    path: Path
    target: Target
    pins: tuple[Pin, ...]
    wheel: str
    model_bytes: int
    has_wheels: bool
    seconds: float


def build_bundle(
    artifact: str | Path,
    output: str | Path,
    target: str | Path,
    *,
    python: str | None = None,
    wheels: bool = False,
    overwrite: bool = False,
    extras: tuple[str, ...] = (),
    stage: Stage | None = None,
    progress: OnProgress | None = None,
) -> BundleResult:
    """Bundle ARTIFACT for the device profile TARGET (a name or a .toml path with a [bundle] table)
    into the folder OUTPUT. python: the device's CPython "3.N" (default: the profile's). wheels:
    also download every pinned wheel, so the device installs offline. extras: optional parts of
    edgekit the device gets too, e.g. ("structured",) for JSON schemas, grammars and tool calls."""
    start = time.perf_counter()
    note = stage or (lambda message: None)
    report = progress or (lambda step: None)
    chosen = bundle_target(target, python)
    project = installed_project()
    _check_python(chosen, project)
    _check_extras(extras, project)
    folder = Path(artifact)
    manifest = check_artifact(folder, chosen)
    output = Path(output)
    _check_output(output, overwrite, folder)
    model_bytes = sum(p.stat().st_size for name in manifest.files if (p := folder / name).is_file())
    note(f"checking {folder} ({model_bytes / 1e6:.1f} MB)")
    read_manifest(folder)  # every file's sha256, before anything is written
    if manifest.profile not in (None, chosen.name):
        note(
            f"note: {folder} was exported with profile {manifest.profile}; it runs on {chosen.name}, but "
            f"`edgekit export --profile {chosen.profile_option}` picks that device's recipe"
        )
    _check_free_space(output, model_bytes)

    note(f"resolving edgekit's runtime for {chosen.describe()} ({chosen.name})")
    requirements = [*project.runtime_requirements, *(r for extra in extras for r in project.extras[extra])]
    pins = resolve(requirements, chosen, _collecting(report), extras=tuple(extras))
    _check_light(pins)

    model = " ".join(str(manifest.source.name or folder.name).split())
    launch = Launch(output.name, model, chosen, project.wheel_name, _profile_argument(chosen))
    note(f"writing {output}")
    with staging(output, overwrite) as tmp:
        _copy_artifact(folder, tmp / MODEL_FOLDER, manifest, report)
        header = [
            f"edgekit {project.version}'s runtime{''.join(f' + {e}' for e in extras)} for {chosen.name}: "
            f"{chosen.describe()}, wheels up to {chosen.platform}",
            "made by `edgekit bundle`; install: pip install --require-hashes --only-binary=:all: -r requirements.txt",
            "",
        ]
        (tmp / "requirements.txt").write_text(requirements_text(pins, header))
        build_wheel(tmp, project)
        if wheels:
            note(f"downloading {len(pins)} wheels into {WHEELS_FOLDER}/")
            download_wheels(tmp / "requirements.txt", pins, chosen, tmp / WHEELS_FOLDER, _saving(len(pins), report))
        if not chosen.shipped:
            shutil.copyfile(chosen.profile.path, tmp / CUSTOM_PROFILE)  # type: ignore[arg-type]
        bandwidth = chosen.profile.bundle.memory_bandwidth if chosen.profile.bundle else 0.0
        runtime_bytes = installed_bytes(tmp / WHEELS_FOLDER) + installed_bytes(tmp) if wheels else None
        weights = (folder / WEIGHT_FILE).stat().st_size if (folder / WEIGHT_FILE).is_file() else model_bytes
        expect = expectations(
            launch, estimate(manifest, weights, bandwidth), model_bytes, folder_bytes(tmp), runtime_bytes
        )
        _write_launcher(tmp, launch, manifest.flavor or "cpu", wheels, expect)
        note("verifying the bundle")
        read_manifest(tmp / MODEL_FOLDER)
        check_wheel(tmp / project.wheel_name)
    return BundleResult(
        output, chosen, tuple(pins), project.wheel_name, model_bytes, wheels, time.perf_counter() - start
    )


def check_artifact(folder: Path, target: Target) -> Manifest:
    """The artifact's manifest, once it is known to be an artifact this target runs (files unchecked)."""
    export = f"edgekit export SOURCE -o OUT --profile {target.profile_option}"
    if not folder.exists():
        raise EdgekitError(f"{folder}: no such artifact folder; make one with `{export}`")
    if not folder.is_dir():
        raise EdgekitError(
            f"{folder}: a file, not an artifact folder; export it first: "
            f"edgekit export {folder} -o OUT --profile {target.profile_option}"
        )
    if not (folder / MANIFEST).is_file():
        if any((folder / name).exists() for name in ("config.json", "tokenizer.json", "model.safetensors")):
            raise EdgekitError(
                f"{folder}: a model checkpoint, not an edgekit artifact (no {MANIFEST}); export it first: "
                f"edgekit export {folder} -o OUT --profile {target.profile_option}"
            )
        raise EdgekitError(f"{folder}: not an edgekit artifact (no {MANIFEST}); make one with `{export}`")
    manifest = read_manifest(folder, check_files=False)
    wanted = target.profile.export
    if manifest.format == "mlx" and wanted.format != "mlx":
        raise EdgekitError(
            f"{folder}: an MLX artifact, but {target.name} runs ONNX Runtime; export an ONNX one with `{export}`"
        )
    if manifest.format != wanted.format:
        raise EdgekitError(
            f"{folder}: a {manifest.format} artifact, but {target.name} runs {wanted.format} ones; "
            f"re-export with `{export}`"
        )
    if wanted.format == "onnx" and manifest.flavor != wanted.flavor:
        raise EdgekitError(
            f"{folder}: an ONNX {manifest.flavor} artifact, but {target.name} runs {wanted.flavor} ones; "
            f"re-export with `{export}`"
        )
    return manifest


def _check_python(target: Target, project: Project) -> None:
    if project.requires_python and not Requirement(f"edgekit{project.requires_python}").specifier.contains(
        f"{target.python}.0"
    ):
        raise EdgekitError(f"--python {target.python}: edgekit needs Python {project.requires_python}")


def _check_extras(extras: tuple[str, ...], project: Project) -> None:
    for extra in extras:
        if extra not in project.extras:
            known = ", ".join(sorted(project.extras)) or "none"
            raise EdgekitError(f"edgekit has no optional part {extra!r} to bundle; it has: {known}")


def _check_output(output: Path, overwrite: bool, artifact: Path) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", output.name):
        raise EdgekitError(
            f"{output}: name the bundle folder with letters, digits, '.', '_' and '-' only "
            f"(it becomes /opt/{output.name or '?'} on the device and a path in the systemd unit)"
        )
    if output.exists() and not overwrite:
        raise EdgekitError(f"{output} already exists; choose another output folder or pass --overwrite")
    if artifact.resolve().is_relative_to(output.resolve()):
        raise EdgekitError(f"{output}: the bundle would replace the artifact {artifact}; choose another output folder")


def _check_free_space(output: Path, model_bytes: int) -> None:
    parent = output.absolute().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if free < model_bytes + FREE_SPACE_MARGIN:
        need = (model_bytes + FREE_SPACE_MARGIN) / 1e6
        raise EdgekitError(f"{parent}: {free / 1e6:.0f} MB free, the bundle needs about {need:.0f} MB; free some space")


def _check_light(pins: list[Pin]) -> None:
    for pin in pins:
        if pin.key in HEAVY:
            raise EdgekitError(
                f"edgekit's runtime requirements pull in {pin.name} (via {', '.join(pin.via)}), which a device "
                "never needs; this is a packaging bug in edgekit, please report it"
            )


def _profile_argument(target: Target) -> str:
    return target.name if target.shipped else f'"$here/{CUSTOM_PROFILE}"'


def _copy_artifact(source: Path, folder: Path, manifest: Manifest, report: OnProgress) -> None:
    names = [*sorted(manifest.files), MANIFEST]
    total = sum((source / name).stat().st_size for name in names)
    done = 0
    folder.mkdir()
    for name in names:
        with open(source / name, "rb") as reader, open(folder / name, "wb") as writer:
            while chunk := reader.read(16 << 20):
                writer.write(chunk)
                done += len(chunk)
                report(Step("copying the model", done, total, name, "B"))
    report(Step("copying the model", total, total, "", "B"))


def _write_launcher(folder: Path, launch: Launch, flavor: str, has_wheels: bool, expect: str) -> None:
    for name, text, mode in (
        ("run.sh", run_sh(launch), 0o755),
        ("install.sh", install_sh(launch), 0o755),
        (SERVICE, systemd_unit(launch), 0o644),
        ("README.md", readme(launch, flavor, has_wheels, expect), 0o644),
    ):
        (folder / name).write_text(text)
        (folder / name).chmod(mode)


def _collecting(report: OnProgress) -> Callable[[str], None]:
    """pip's "Collecting NAME" lines as progress; the count of packages is not known in advance."""
    collected = 0

    def on_line(line: str) -> None:
        nonlocal collected
        if line.startswith("Collecting "):
            collected += 1
            report(Step("resolving", collected, None, re.split(r"[^A-Za-z0-9._-]", line.split()[1])[0]))

    return on_line


def _saving(total: int, report: OnProgress) -> Callable[[str], None]:
    """pip download's "Saved FILE" lines as progress."""
    saved = 0

    def on_line(line: str) -> None:
        nonlocal saved
        if line.startswith(("Saved ", "File was already downloaded ")):
            saved += 1
            report(Step("downloading wheels", saved, total, Path(line.split()[-1]).name))

    return on_line
