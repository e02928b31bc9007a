"""logits_all on a loaded artifact: every position, from the all-logits twin of the generation graph."""

import shutil

import numpy as np
import pytest

from edgekit.artifact import ALL_LOGITS_FILE, DATA_FILE, MODEL_FILE
from edgekit.errors import EdgekitError
from edgekit.generation.loader import load_runtime
from edgekit.runtimes.base import EMPTY_PROMPT
from edgekit.runtimes.onnx import OnnxRuntime

PROMPT = [5, 17, 42, 9, 77, 3, 120, 64]


def test_logits_all_returns_every_position(tiny_artifact):
    runtime = load_runtime(tiny_artifact, max_context=32).runtime
    everything = runtime.logits_all(PROMPT)
    assert everything.shape[0] == len(PROMPT)
    np.testing.assert_allclose(everything[-1], runtime.prefill(PROMPT), rtol=1e-4, atol=1e-4)
    for n in (1, 4):  # position n-1 sees only the tokens before it
        np.testing.assert_allclose(everything[n - 1], runtime.logits_all(PROMPT[:n])[-1], rtol=1e-4, atol=1e-4)
    runtime.reset()  # generation still works after evaluating
    assert np.isfinite(runtime.prefill(PROMPT[:3])).all()


def test_logits_all_needs_no_twin_since_the_graph_takes_logits_to_keep(tiny_artifact, tmp_path):
    for name in (MODEL_FILE, DATA_FILE):
        shutil.copy(tiny_artifact / name, tmp_path / name)
    spec = load_runtime(tiny_artifact, max_context=32).spec
    runtime = OnnxRuntime(tmp_path / MODEL_FILE, spec, 32)
    twin = OnnxRuntime(tiny_artifact / ALL_LOGITS_FILE, spec, 32)
    np.testing.assert_allclose(runtime.logits_all(PROMPT), twin.logits_all(PROMPT), rtol=1e-5, atol=1e-5)
    assert runtime.length == 0


def test_empty_prompt_is_one_clear_error(tiny_artifact):
    runtime = load_runtime(tiny_artifact, max_context=32).runtime
    with pytest.raises(EdgekitError) as raised:
        runtime.prefill([])
    assert str(raised.value) == EMPTY_PROMPT and runtime.length == 0
