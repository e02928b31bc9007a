"""Device profiles: a TOML file per device that says how to recognize it, how to export for it and
how to run there. The schema is strict: an unknown key, a wrong type or a value outside the allowed
set is an error naming the file, the key and what is allowed."""

from __future__ import annotations

import re
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import EdgekitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ALGORITHMS = ("rtn", "hqq", "awq", "gptq", "awq-gptq")  # mirrors quant.recipe, which imports more than a Pi needs
CODE_BITS = (4, 5, 6, 8)  # mirrors quant.tensor.SUPPORTED_BITS; 5 and 6 for MLX, the export checks the format


class ProfileError(EdgekitError):
    """A profile file that does not follow the schema, or a profile name that does not exist."""


@dataclass(frozen=True)
class Detect:
    """All the listed conditions must hold; an empty list is no condition. Strings match
    case-insensitively; device_tree_model and cpu_name match when any listed text is contained."""

    os: tuple[str, ...] = ()
    arch: tuple[str, ...] = ()
    device_tree_model: tuple[str, ...] = ()
    cpu_name: tuple[str, ...] = ()
    cpu_features: tuple[str, ...] = ()  # every one must be present
    providers: tuple[str, ...] = ()  # every one must be available in onnxruntime
    metal: bool | None = None
    mlx: bool | None = None  # the `mlx` package is installed


@dataclass(frozen=True)
class ExportSettings:
    # the quantization defaults mirror quant.DEFAULT_RECIPE (tests/test_device_profiles.py holds them equal)
    format: str = "onnx"
    flavor: str = "cpu"
    algorithm: str = "awq-gptq"
    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    embedding_bits: int = 4
    lm_head_bits: int = 8
    edge_down_bits: int = 8  # the down projection of the first and last eighth of the layers; 0 = as the MLP
    key_bits: int = 0  # the attention's key projection in every layer; 0 = as the attention (the recipe's None)
    rotate_residual: bool | None = None  # the residual stream rotated; unset: the export decides (Recipe.with_rotation)
    whole_groups: bool = True  # False: a row the group does not divide keeps a padded last block (Recipe)
    accuracy_level: int = 4
    max_context: int = 4096
    kv_bits: int = 0  # ONNX cpu/cuda and MLX: 8 = an int8 KV cache, 0 = float
    # npu flavor: the QNN SoC to also compile EPContext models for ("" = none), and its HTP arch
    qnn_soc_model: str = ""
    qnn_htp_arch: str = ""
    npu_weight_format: str = ""  # a name in exporters/npu/weight_formats.FORMATS; "" = its DEFAULT_FORMAT


@dataclass(frozen=True)
class Provider:
    name: str
    options: dict[str, str] = field(default_factory=dict)

    def for_onnxruntime(self) -> str | tuple[str, dict[str, str]]:
        return (self.name, dict(self.options)) if self.options else self.name


@dataclass(frozen=True)
class RuntimeSettings:
    providers: tuple[Provider, ...] = (Provider("CPUExecutionProvider"),)
    threads: int = 0  # 0 = ONNX Runtime's choice (one per physical core)
    max_context: int = 4096
    prefill_chunk: int = 256  # = runtimes.onnx.DEFAULT_PREFILL_CHUNK (why there)
    huge_pages: bool = True  # Linux: ONNX Runtime's repacked weights moved onto huge pages after loading
    parallel: int = 4  # `edgekit serve`: sequences decoded together (continuous batching)
    kv_cache_mb: int = 1024  # their KV cache's budget: each one's context is cut to fit, or loading refused
    prefix_cache_mb: int = 256  # keys and values of recent prompts kept across requests (0: off)
    draft: str = ""  # a draft model's artifact for speculative decoding (relative: to this file); "" none


@dataclass(frozen=True)
class BundleSettings:
    """What `edgekit bundle` resolves the runtime's wheels for: the target's CPython "3.N" and the
    newest manylinux tag its C library runs (older manylinux tags of that architecture are implied)."""

    python: str
    platform: str
    memory_bandwidth: float = 0.0  # GB/s a decode loop reads at; 0: not known (no speed estimate)


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    detect: Detect = Detect()
    export: ExportSettings = ExportSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    bundle: BundleSettings | None = None  # None: not a target of `edgekit bundle`
    auto: bool = True  # False: used only when asked for by name, never picked by `--profile auto`
    path: Path | None = None


_CHOICES: dict[str, tuple[Any, ...]] = {
    "os": ("linux", "darwin", "windows"),
    "arch": ("x86_64", "aarch64"),
    "format": ("onnx", "mlx"),
    "flavor": ("cpu", "cuda", "npu"),
    "algorithm": ALGORITHMS,
    "bits": CODE_BITS,
    "group_size": (16, 32, 64, 128),
    "embedding_bits": CODE_BITS,
    "lm_head_bits": CODE_BITS,
    "edge_down_bits": (0, *CODE_BITS),
    "key_bits": (0, *CODE_BITS),
    "accuracy_level": (0, 1, 2, 3, 4),
    "kv_bits": (0, 8),
}
_MINIMUM = {
    "threads": 0,
    "max_context": 16,
    "prefill_chunk": 1,
    "memory_bandwidth": 0,
    "parallel": 1,
    "kv_cache_mb": 1,
    "prefix_cache_mb": 0,
}
_PATTERNS = {"python": (r"3\.\d+", '"3.N"'), "platform": (r"manylinux_2_\d+_(aarch64|x86_64)", '"manylinux_2_N_ARCH"')}


def _fail(path: Path | str, key: str, message: str) -> ProfileError:
    return ProfileError(f"{path}: {key}: {message}")


def _check_value(path: Path | str, key: str, name: str, value: Any, kind: type) -> Any:
    if kind is bool or isinstance(value, bool):
        if not isinstance(value, bool) or kind is not bool:
            raise _fail(path, key, f"expected {kind.__name__}, got {value!r}")
    elif kind is float and isinstance(value, int):
        value = float(value)
    elif not isinstance(value, kind):
        raise _fail(path, key, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise _fail(path, key, f"{value!r} is not allowed; allowed: {', '.join(map(str, _CHOICES[name]))}")
    if name in _MINIMUM and value < _MINIMUM[name]:
        raise _fail(path, key, f"{value!r} is below the minimum {_MINIMUM[name]}")
    if name in _PATTERNS and not re.fullmatch(_PATTERNS[name][0], value):
        raise _fail(path, key, f"{value!r} is not of the form {_PATTERNS[name][1]}")
    return value


def _table(path: Path | str, where: str, data: Any, cls: type) -> Any:
    """Build dataclass `cls` from a TOML table, checking every key against its annotation."""
    if not isinstance(data, dict):
        raise _fail(path, where, f"expected a table, got {data!r}")
    known = {f.name: f for f in fields(cls) if f.name != "path"}
    values: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        if name not in known:
            raise _fail(path, key, f"unknown key; allowed here: {', '.join(known)}")
        annotation = str(known[name].type).removesuffix(" | None")
        if annotation.startswith("tuple[str"):
            if not isinstance(value, list):
                raise _fail(path, key, f"expected a list of strings, got {value!r}")
            values[name] = tuple(_check_value(path, key, name, v, str) for v in value)
        elif annotation.startswith("tuple[Provider"):
            if not isinstance(value, list) or not value:
                raise _fail(path, key, "expected a non-empty list of {name = ..., options = {...}} tables")
            values[name] = tuple(_provider(path, f"{key}[{i}]", v) for i, v in enumerate(value))
        elif annotation in ("Detect", "ExportSettings", "RuntimeSettings", "BundleSettings"):
            values[name] = _table(path, key, value, globals()[annotation])
        else:
            kind = {"str": str, "int": int, "float": float, "bool": bool}[annotation]
            values[name] = _check_value(path, key, name, value, kind)
    missing = [f.name for f in fields(cls) if f.name not in values and f.default is MISSING and f.name != "path"]
    if missing and where:
        raise _fail(path, f"{where}.{missing[0]}", "missing; this table needs " + ", ".join(missing))
    return cls(**values)


def _provider(path: Path | str, where: str, data: Any) -> Provider:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise _fail(path, where, f"expected a table with a string 'name', got {data!r}")
    unknown = set(data) - {"name", "options"}
    if unknown:
        raise _fail(path, f"{where}.{sorted(unknown)[0]}", "unknown key; allowed here: name, options")
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise _fail(path, f"{where}.options", f"expected a table, got {options!r}")
    return Provider(data["name"], {str(k): str(v) for k, v in options.items()})


def parse_profile(text: str, path: Path | str) -> DeviceProfile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML ({exc})") from None
    for required in ("name", "description"):
        if required not in data:
            raise _fail(path, required, "missing; every profile has a name and a description")
    profile = _table(path, "", data, DeviceProfile)
    return DeviceProfile(**{**profile.__dict__, "path": Path(path)})


def read_profile(path: Path | str) -> DeviceProfile:
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"{path}: no such profile file")
    return parse_profile(path.read_text(encoding="utf-8"), path)
