"""Device profiles: the shipped files parse, the schema is strict, and detection picks the right one
from faked platform facts."""

from __future__ import annotations

import pytest

from edgekit.device_profiles import (
    HostFacts,
    ProfileError,
    detect,
    load_profile,
    match,
    parse_profile,
    profile_names,
    shipped_profiles,
)

REQUIRED = {
    "raspberry-pi-5",
    "raspberry-pi-4",
    "apple-silicon",
    "snapdragon-x-elite",
    "nvidia-cuda",
    "nvidia-jetson-orin",
    "generic-x86-64-cpu",
    "x86-64-avx512",
    "generic-arm64-cpu",
}

CPU = ("CPUExecutionProvider",)
CUDA = ("CUDAExecutionProvider", "CPUExecutionProvider")
FACTS = {
    "raspberry-pi-5": HostFacts(
        "linux", "aarch64", "Raspberry Pi 5 Model B Rev 1.0", "Cortex-A76", frozenset({"asimd", "asimddp"}), CPU
    ),
    "raspberry-pi-4": HostFacts("linux", "aarch64", "Raspberry Pi 4 Model B Rev 1.4", "", frozenset({"asimd"}), CPU),
    "apple-silicon": HostFacts(
        "darwin", "aarch64", "", "Apple M3 Pro", frozenset(), ("CoreMLExecutionProvider",) + CPU, True
    ),
    "snapdragon-x-elite": HostFacts(
        "windows", "aarch64", "", "Snapdragon(R) X Elite - X1E78100 - Qualcomm(R) Oryon(TM) CPU", frozenset(), CPU
    ),
    "nvidia-cuda": HostFacts("linux", "x86_64", "", "AMD Ryzen 9 7950X", frozenset({"avx2", "avx512f"}), CUDA),
    "nvidia-jetson-orin": HostFacts(
        "linux", "aarch64", "NVIDIA Jetson Orin Nano Developer Kit", "", frozenset({"asimd"}), CUDA
    ),
    "generic-x86-64-cpu": HostFacts("windows", "x86_64", "", "Intel(R) Core(TM) i7-1185G7", frozenset(), CPU),
    "x86-64-avx512": HostFacts(
        "linux", "x86_64", "", "AMD EPYC 9654", frozenset({"avx2", "avx512f", "avx512bw", "avx512_vnni"}), CPU
    ),
    "generic-arm64-cpu": HostFacts("linux", "aarch64", "Pine64 RockPro64", "", frozenset({"asimd"}), CPU),
}


def test_every_required_profile_ships_and_parses():
    assert REQUIRED <= set(profile_names())
    for profile in shipped_profiles():
        assert profile.description and profile.runtime.providers


@pytest.mark.parametrize("expected", sorted(FACTS))
def test_detection_on_faked_facts(expected):
    found = detect(FACTS[expected])
    assert found.profile.name == expected, found.reasons
    assert found.reasons  # says why


def test_windows_on_x86_with_cuda_is_not_a_jetson():
    facts = HostFacts("windows", "x86_64", "", "Intel", frozenset(), CUDA)
    assert detect(facts).profile.name == "nvidia-cuda"


def test_avx512_vnni_keeps_padded_blocks_and_avx2_takes_whole_ones():
    """The one recipe difference between the two x86 profiles (README, Quantization: which blocks ran
    faster on which kernels); a CUDA machine with AVX-512 is still a CUDA machine."""
    avx512 = FACTS["x86-64-avx512"]
    assert not load_profile(detect(avx512).profile.name).export.whole_groups
    avx2 = HostFacts("linux", "x86_64", "", "AMD EPYC 7B13", frozenset({"avx2", "fma"}), CPU)
    assert detect(avx2).profile.name == "generic-x86-64-cpu" and load_profile("generic-x86-64-cpu").export.whole_groups
    avx512_without_vnni = HostFacts("linux", "x86_64", "", "Intel Xeon Gold 6148", frozenset({"avx2", "avx512f"}), CPU)
    assert detect(avx512_without_vnni).profile.name == "generic-x86-64-cpu"
    zen4_with_cuda = HostFacts("linux", "x86_64", "", "AMD Ryzen 9 7950X", avx512.cpu_features, CUDA)
    assert detect(zen4_with_cuda).profile.name == "nvidia-cuda"


def test_mlx_cpu_matches_where_mlx_is_installed_but_is_used_only_by_name():
    linux_with_mlx = HostFacts("linux", "x86_64", "", "AMD EPYC", frozenset({"avx2"}), CPU, mlx=True)
    profile = load_profile("mlx-cpu")
    assert not profile.auto and profile.export.format == "mlx"
    assert match(profile, linux_with_mlx).matched
    assert not match(profile, HostFacts("linux", "x86_64")).matched
    assert detect(linux_with_mlx).profile.name == "generic-x86-64-cpu"  # ONNX is the fast path there


def test_an_unknown_machine_has_no_profile():
    with pytest.raises(ProfileError, match="no device profile fits this machine"):
        detect(HostFacts("freebsd", "riscv64"))


def test_this_machine_has_a_profile():
    assert detect().profile.name in profile_names()


GOOD = """
name = "my-board"
description = "a board"
[detect]
arch = ["aarch64"]
[export]
bits = 4
[runtime]
threads = 2
providers = [{ name = "CPUExecutionProvider", options = { foo = 1 } }]
"""


def test_a_user_profile_file(tmp_path):
    path = tmp_path / "my-board.toml"
    path.write_text(GOOD)
    profile = load_profile(path)
    assert profile.name == "my-board" and profile.runtime.threads == 2 and profile.path == path
    assert profile.runtime.providers[0].for_onnxruntime() == ("CPUExecutionProvider", {"foo": "1"})
    assert profile.export.group_size == 128 and profile.runtime.huge_pages  # unspecified keys take the defaults


def test_a_profiles_defaults_are_the_recipes_and_the_runtimes():
    """profile.py mirrors these values rather than import quant (more than a Pi installs)."""
    from edgekit.device_profiles.profile import ALGORITHMS, CODE_BITS, ExportSettings, RuntimeSettings
    from edgekit.quant import ALGORITHMS as RECIPE_ALGORITHMS
    from edgekit.quant import DEFAULT_RECIPE
    from edgekit.quant.tensor import SUPPORTED_BITS
    from edgekit.runtimes.onnx import DEFAULT_PREFILL_CHUNK

    export = ExportSettings()
    keys = ("algorithm", "bits", "group_size", "symmetric", "embedding_bits", "lm_head_bits", "edge_down_bits")
    for key in (*keys, "whole_groups"):
        assert getattr(export, key) == getattr(DEFAULT_RECIPE, key), key
    assert (export.key_bits or None) == DEFAULT_RECIPE.key_bits
    assert export.rotate_residual is DEFAULT_RECIPE.rotate_residual is None  # decided by the artifact's runtime
    assert ALGORITHMS == RECIPE_ALGORITHMS and CODE_BITS == SUPPORTED_BITS
    assert RuntimeSettings().prefill_chunk == DEFAULT_PREFILL_CHUNK


@pytest.mark.parametrize(
    "change,message",
    [
        (("bits = 4", "bitz = 4"), "export.bitz: unknown key; allowed here: format, flavor"),
        (("bits = 4", 'bits = "4"'), "export.bits: expected int, got str '4'"),
        (("bits = 4", "bits = 3"), "export.bits: 3 is not allowed; allowed: 4, 5, 6, 8"),
        (("bits = 4", "bits = true"), "export.bits: expected int, got True"),
        (("bits = 4", 'flavor = "tpu"'), "export.flavor: 'tpu' is not allowed; allowed: cpu, cuda, npu"),
        (('arch = ["aarch64"]', 'arch = "aarch64"'), "detect.arch: expected a list of strings"),
        (('arch = ["aarch64"]', 'arch = ["arm"]'), "detect.arch: 'arm' is not allowed; allowed: x86_64, aarch64"),
        (("threads = 2", "threads = -1"), "runtime.threads: -1 is below the minimum 0"),
        (('{ name = "CPUExecutionProvider", options = { foo = 1 } }', '{ nam = "x" }'), "runtime.providers[0]"),
        (('description = "a board"', ""), "description: missing"),
        (("[detect]", "[detect"), "not valid TOML"),
        (("[runtime]", "[runtime]\nspeed = 1"), "runtime.speed: unknown key"),
        (("threads = 2", "threads = 2\nhuge_pages = 1"), "runtime.huge_pages: expected bool, got 1"),
    ],
)
def test_schema_errors_name_the_file_and_the_key(tmp_path, change, message):
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace(*change))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text, text


def test_unknown_profile_name_lists_the_shipped_ones():
    with pytest.raises(ProfileError, match="no device profile named 'pi5'; shipped profiles: apple-silicon, "):
        load_profile("pi5")
    with pytest.raises(ProfileError, match="no such profile file"):
        load_profile("/no/such/profile.toml")


def test_parse_profile_reports_the_name_it_was_given():
    with pytest.raises(ProfileError, match="^somewhere.toml: name: missing"):
        parse_profile('description = "x"', "somewhere.toml")
