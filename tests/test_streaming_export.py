"""The pieces that keep an export's memory bounded: row-block quantization, quantized tensors spilled
to disk, the streamed reference forward, and mapped source pages let go after use."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import rel_err

from edgekit.quant import pipeline
from edgekit.quant.calibration import token_windows
from edgekit.quant.hqq import quantize_hqq
from edgekit.quant.pipeline import quantize_checkpoint
from edgekit.quant.recipe import Recipe
from edgekit.quant.rtn import quantize_rtn
from edgekit.quant.spill import SpilledTensors
from edgekit.reference import ReferenceModel
from edgekit.sources import open_checkpoint
from edgekit.testing import write_tiny_checkpoint


def same(a, b) -> bool:
    zeros = (a.zeros is None and b.zeros is None) or np.array_equal(a.zeros, b.zeros)
    return (
        np.array_equal(a.codes, b.codes)
        and np.array_equal(a.scales, b.scales)
        and zeros
        and (a.bits, a.group_size, a.shape, a.algorithm) == (b.bits, b.group_size, b.shape, b.algorithm)
    )


@pytest.mark.parametrize("algorithm", ["rtn", "hqq", "gptq"])
def test_quantizing_by_row_blocks_is_exact(tmp_path, monkeypatch, algorithm):
    folder = write_tiny_checkpoint(tmp_path / "m", "llama", tie_word_embeddings=True, bf16=True)
    checkpoint = open_checkpoint(folder)
    calibration = token_windows(list(range(3, 200)), 32, 2) if algorithm == "gptq" else None
    recipe = Recipe(algorithm=algorithm)
    factored = []
    factor = pipeline.gptq_factor
    monkeypatch.setattr(pipeline, "gptq_factor", lambda *a: factored.append(1) or factor(*a))
    whole = quantize_checkpoint(checkpoint, recipe, calibration)
    in_one_block = len(factored)
    monkeypatch.setattr(pipeline, "ROW_BLOCK", 50)  # 384 rows: 8 blocks, the last one short
    blocks = quantize_checkpoint(checkpoint, recipe, calibration)
    name = "model.embed_tokens.weight"
    assert same(whole.quantized[name], blocks.quantized[name])
    # the tied lm_head's Hessian factored once for all blocks, as for one block
    assert len(factored) == 2 * in_one_block and (in_one_block > 0) == (algorithm == "gptq")


@pytest.mark.parametrize(
    "make",
    [
        lambda w: quantize_rtn(w, 4, 32, False),
        lambda w: quantize_rtn(w, 4, 32, True),
        lambda w: quantize_rtn(w, 8, 64, False),
        lambda w: quantize_hqq(w, 4, 32, False),  # float zero points
        lambda w: quantize_rtn(w[:, :40], 4, 32, False),  # padded last group
    ],
)
def test_spilled_tensors_come_back_exactly(tmp_path, make):
    qt = make(np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32))
    with SpilledTensors(tmp_path) as spilled:
        spilled["w"] = qt
        assert list(spilled) == ["w"] and len(spilled) == 1
        assert same(spilled["w"], qt)
        rows = np.array([5, 0, 255, 5])
        assert same(spilled.take_rows("w", rows), qt.take_rows(rows))
        stored = sum(p.stat().st_size for p in spilled.folder.iterdir())
        # codes packed, scales and zero points as float16, plus the file format's headers
        assert stored <= qt.codes.nbytes * qt.bits / 8 + 4 * qt.scales.size + 1024
        del spilled["w"]
        assert not any(spilled.folder.iterdir())
    assert not spilled.folder.exists()


def test_quantize_into_spilled_tensors_matches_a_dict(tmp_path, tiny_models):
    checkpoint = open_checkpoint(tiny_models["qwen2"])
    in_memory = quantize_checkpoint(checkpoint, Recipe(algorithm="hqq"))
    with SpilledTensors(tmp_path) as spilled:
        on_disk = quantize_checkpoint(checkpoint, Recipe(algorithm="hqq"), into=spilled)
        assert set(on_disk.quantized) == set(in_memory.quantized)
        assert all(same(on_disk.quantized[n], in_memory.quantized[n]) for n in in_memory.quantized)
        assert on_disk.nbytes == in_memory.nbytes and on_disk.parameter_count == in_memory.parameter_count


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3"])
def test_streamed_forward_matches_the_whole_model(tiny_models, family):
    checkpoint = open_checkpoint(tiny_models[family])
    qm = quantize_checkpoint(checkpoint, Recipe(algorithm="rtn"))
    ids = [5, 17, 42, 99, 3, 250]
    expected = ReferenceModel(checkpoint.spec, qm.weights()).forward(ids)
    streamed = ReferenceModel(checkpoint.spec, {}, layers=False, head=False).forward_streamed(qm.weights(), ids, 100)
    assert rel_err(streamed, expected) < 1e-5


def test_released_tensors_read_back_the_same(tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "m", "llama", bf16=True)
    store = open_checkpoint(folder).tensors
    name = "model.layers.0.mlp.down_proj.weight"
    before = store.get(name)
    store.release(name)
    assert np.array_equal(store.get(name), before)
    assert np.array_equal(store.rows(name, 3, 9), before[3:9])
    assert np.array_equal(store.take(name, np.array([7, 0, 7])), before[[7, 0, 7]])
