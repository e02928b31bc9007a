"""The npu flavor: static QDQ graphs exported for every family and run on the QNN HTP backend that
onnxruntime-qnn ships (an emulator of the Hexagon NPU on x86-64 Linux), CPU fallback disabled."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import ALL_FAMILIES

from edgekit import export, load
from edgekit.errors import EdgekitError
from edgekit.exporters.npu.verify import MEDIAN_TOLERANCE, TOLERANCE
from edgekit.exporters.npu.weights import NpuWeights, npu_weights
from edgekit.quant.recipe import Recipe
from edgekit.reference import ReferenceModel
from edgekit.runtimes.base import EMPTY_PROMPT

pytest.importorskip("onnxruntime_qnn", reason="the npu flavor needs onnxruntime-qnn")

PROMPT = [1, 5, 9, 20, 7, 3, 11, 2, 30, 17]  # 10 tokens: one full 8-token chunk and a padded one
STEPS = 64

RTN = Recipe(algorithm="rtn", group_size=32)  # the Snapdragon profiles' blocks


def npu_export(source, out, **kwargs):
    return export(source, out, flavor="npu", recipe=RTN, max_context=96, **kwargs)


@pytest.fixture(scope="module")
def npu_artifacts(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("npu")
    return {family: npu_export(tiny_models[family], root / family).output for family in ALL_FAMILIES}


def reference_for(folder) -> ReferenceModel:
    """The numpy reference on the weights the artifact's graphs hold (rebuilt from the source)."""
    from edgekit.quant.pipeline import quantize_checkpoint
    from edgekit.sources import open_checkpoint

    manifest = json.loads((folder / "edgekit.json").read_text())
    checkpoint = open_checkpoint(manifest["source"]["path"])
    qm = quantize_checkpoint(checkpoint, RTN)
    bits = {name: record["bits"] for name, record in qm.records.items()}
    w: NpuWeights = npu_weights(checkpoint.spec, qm.weights(), manifest["npu"]["weight_format"], bits)
    return ReferenceModel(w.reference_spec, w.reference)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_npu_greedy_tokens_follow_the_reference(npu_artifacts, family):
    folder = npu_artifacts[family]
    manifest = json.loads((folder / "edgekit.json").read_text())
    assert manifest["flavor"] == "npu" and manifest["verify"]["checked"]
    assert manifest["verify"]["max_rel_error"] <= TOLERANCE
    runtime = load(folder).runtime
    assert type(runtime).__name__ == "NpuRuntime"
    ids, got = list(PROMPT), [runtime.prefill(PROMPT)]
    for _ in range(STEPS - 1):
        ids.append(int(np.argmax(got[-1])))
        got.append(runtime.decode(ids[-1]))
    got = np.stack(got)
    # teacher-forced: the reference sees the artifact's own tokens, so one early flip does not
    # turn every later step into a disagreement
    expected = reference_for(folder).forward(ids)[len(PROMPT) - 1 :]
    agree = np.mean(got.argmax(-1) == expected.argmax(-1))
    error = np.abs(got - expected).max(-1) / np.abs(expected).max()
    assert agree >= 0.9, (agree, error.max())
    assert np.median(error) <= MEDIAN_TOLERANCE and error.max() <= TOLERANCE, error


def test_npu_runtime_trims_and_resets(npu_artifacts):
    runtime = load(npu_artifacts["llama"]).runtime
    first = runtime.prefill(PROMPT)
    runtime.decode(int(np.argmax(first)))
    runtime.trim(len(PROMPT) - 1)
    again = runtime.prefill(PROMPT[-1:])  # the last prompt token through the decode graph
    assert np.argmax(again) == np.argmax(first) and np.abs(again - first).max() < 0.05 * np.abs(first).max()
    runtime.reset()
    assert runtime.length == 0
    all_logits = runtime.logits_all(PROMPT)
    assert all_logits.shape == (len(PROMPT), runtime.spec.vocab_size)
    with pytest.raises(EdgekitError, match="context"):
        runtime.prefill(list(range(runtime.max_context + 1)))


def test_epcontext_gives_the_same_tokens(tiny_models, npu_artifacts, tmp_path):
    result = export(
        tiny_models["qwen3"],
        tmp_path / "ctx",
        profile="snapdragon-8-gen-3",
        recipe=RTN,
        max_context=96,
    )
    manifest = json.loads((result.output / "edgekit.json").read_text())
    assert manifest["npu"]["context_graphs"] and manifest["npu"]["qnn_options"]["soc_model"] == "57"
    assert manifest["verify"]["epcontext"]["same_tokens"]
    for name in manifest["npu"]["context_graphs"].values():
        assert b"EPContext" in (result.output / name).read_bytes()[:4096]
    compiled = load(result.output).generate("hello", max_new_tokens=12).text
    assert compiled == load(npu_artifacts["qwen3"]).generate("hello", max_new_tokens=12).text


def test_npu_bad_input(tiny_models, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from edgekit.cli import cli
    from edgekit.runtimes import onnx_npu

    monkeypatch.setattr(onnx_npu, "_registered", [])
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime_qnn", None)  # as if not installed
    args = ["export", str(tiny_models["llama"]), "-o", str(tmp_path / "x"), "--flavor", "npu"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "pip install onnxruntime-qnn" in result.output and "--flavor cpu" in result.output
    assert not (tmp_path / "x").exists()


def test_empty_prompt_is_one_clear_error(npu_artifacts):
    runtime = load(npu_artifacts["llama"]).runtime
    with pytest.raises(EdgekitError) as raised:
        runtime.prefill([])
    assert str(raised.value) == EMPTY_PROMPT and runtime.length == 0


def test_weight_shared_context_compiles_but_the_emulator_does_not_load_it(npu_artifacts, tmp_path):
    """QNN's weight sharing (ep.share_ep_contexts): both graphs in one context binary with one copy
    of the weights, smaller than the two embedded ones; the x86-64 emulator refuses to load it, so
    the export does not write it. When onnxruntime-qnn loads it, this test fails: verify and use it."""
    import shutil

    from edgekit.exporters.npu.context import compile_context
    from edgekit.exporters.npu.layout import CONTEXT_GRAPHS
    from edgekit.exporters.npu.options import NpuOptions
    from edgekit.runtimes.onnx_npu import qnn_session

    npu = json.loads((npu_artifacts["llama"] / "edgekit.json").read_text())["npu"]
    options = NpuOptions(npu["context"], npu["chunk"], soc_model="60", htp_arch="73")
    sizes = {}
    for shared in (False, True):
        folder = tmp_path / f"shared={shared}"
        shutil.copytree(npu_artifacts["llama"], folder)
        compile_context(folder, options, shared=shared)
        sizes[shared] = sum(p.stat().st_size for p in folder.iterdir() if ".ctx" in p.name)
    folder = tmp_path / "shared=True"
    (binary,) = folder.glob("*.bin")
    for name in CONTEXT_GRAPHS.values():
        assert binary.name.encode() in (folder / name).read_bytes()
    assert sizes[True] < 0.8 * sizes[False]
    with pytest.raises(EdgekitError, match="NOT_SUPPORTED"):
        qnn_session(folder / CONTEXT_GRAPHS["decode"], options.qnn_options)


def test_unknown_weight_format_in_a_profile_is_one_clear_error():
    from edgekit.device_profiles import ExportSettings
    from edgekit.exporters.npu.options import npu_options

    settings = ExportSettings(flavor="npu", npu_weight_format="int3_magic")
    with pytest.raises(EdgekitError, match="npu_weight_format 'int3_magic'.*lpbq32"):
        npu_options(settings, None, None, 512)
    assert (
        npu_options(ExportSettings(flavor="npu", npu_weight_format="lpbq32"), None, None, 512).weight_format == "lpbq32"
    )
