"""An int8 KV cache in the ONNX graph (GroupQueryAttention's per-channel quantized cache) and in
the MLX runtime (mx.quantize's codes with per-position scales per group of channels): chosen by
kv_bits= or the profile, a quarter of the float32 cache's bytes in ONNX (under a third in MLX,
scales included), logits within a stated tolerance of the float cache's, speculation still exact,
the MLX batch runtime's prefix cache keeping the stored bytes, and kinds of artifact without one
refusing it in one line."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from test_speculative import copy_prompt

import edgekit
from edgekit.cli import cli
from edgekit.device_profiles import load_profile
from edgekit.errors import EdgekitError
from edgekit.exporters.kv_scales import largest_keys
from edgekit.exporters.pipeline import export
from edgekit.generation.loader import load_runtime
from edgekit.quant.recipe import Recipe

FAST = Recipe(algorithm="rtn", group_size=32)
# int8 KV against float32 KV, relative to the largest |logit|, after a 48-token prompt and 8 steps
TOLERANCE = 0.03


@pytest.fixture(scope="module")
def pair(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("kv")
    export(tiny_models["llama"], root / "float", recipe=FAST, max_context=256)
    export(tiny_models["llama"], root / "int8", recipe=FAST, max_context=256, kv_bits=8)
    return root / "float", root / "int8"


def test_the_int8_cache_is_a_quarter_of_the_float_one_and_its_logits_stay_close(pair):
    runtimes = [load_runtime(p, max_context=256).runtime for p in pair]
    assert [str(r.kv_dtype) for r in runtimes] == ["float32", "int8"]
    sizes = [sum(k.numpy().nbytes + v.numpy().nbytes for k, v in r.cache) for r in runtimes]
    assert sizes[1] * 4 == sizes[0]
    prompt = [int(t) for t in np.random.default_rng(3).integers(3, 380, 48)]
    logits = []
    for runtime in runtimes:
        rows = [runtime.prefill(prompt)]
        rows += [runtime.decode(t) for t in (5, 6, 7, 8, 9, 10, 11, 12)]
        logits.append(np.stack(rows))
    error = np.abs(logits[1] - logits[0]).max() / np.abs(logits[0]).max()
    assert 0 < error < TOLERANCE
    assert np.mean(logits[1].argmax(-1) == logits[0].argmax(-1)) >= 0.75


def test_the_manifest_records_it_and_speculation_stays_exact(pair):
    engine = edgekit.load(pair[1], profile=None)
    assert engine.manifest.kv_bits == 8 and engine.manifest.verify["checked"]
    prompt = copy_prompt(engine)
    plain = engine.generate(prompt, max_new_tokens=32, ignore_eos=True)
    fast = engine.generate(prompt, max_new_tokens=32, ignore_eos=True, speculation="lookup")
    assert fast.token_ids == plain.token_ids and fast.stats.accepted_tokens > 0


def test_key_scales_hold_at_every_rotation():
    keys = np.random.default_rng(0).standard_normal((2, 40, 8)).astype(np.float32)
    bound = largest_keys(keys, rotary=8)
    angle = 0.7  # any rotation of each pair (i, i + 4) stays within the bound
    cos, sin = np.cos(angle), np.sin(angle)
    turned = np.concatenate([keys[..., :4] * cos - keys[..., 4:] * sin, keys[..., 4:] * cos + keys[..., :4] * sin], -1)
    assert (np.abs(turned).max(axis=1) <= bound + 1e-6).all()
    assert (bound >= np.abs(keys).max(axis=1) - 1e-6).all()


def test_the_pi_profiles_choose_it_and_other_kinds_refuse_it(tiny_models, tmp_path):
    assert load_profile("raspberry-pi-5").export.kv_bits == 8
    assert load_profile("raspberry-pi-4").export.kv_bits == 8
    assert load_profile("generic-x86-64-cpu").export.kv_bits == 0
    with pytest.raises(EdgekitError, match=r"kv_bits=8: a onnx npu artifact takes kv_bits 0 .*made for onnx cpu"):
        export(tiny_models["llama"], tmp_path / "npu", flavor="npu", recipe=FAST, kv_bits=8)
    result = CliRunner().invoke(
        cli, ["export", str(tiny_models["llama"]), "-o", str(tmp_path / "x"), "--kv-bits", "8", "--flavor", "npu"]
    )
    assert result.exit_code == 2 and "takes kv_bits 0" in result.output
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def mlx_pair(tmp_path_factory):
    pytest.importorskip("mlx.core")
    from edgekit.testing import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("kv-mlx")
    # head_dim 32: mx.quantize's smallest group of channels
    source = write_tiny_checkpoint(root / "llama", "llama", hidden_size=128)
    export(source, root / "float", format="mlx", recipe=FAST, max_context=256)
    export(source, root / "int8", format="mlx", recipe=FAST, max_context=256, kv_bits=8)
    return root / "float", root / "int8"


def _prompt_then_steps(runtime) -> np.ndarray:
    prompt = [int(t) for t in np.random.default_rng(3).integers(3, 380, 48)]
    rows = [runtime.prefill(prompt)]
    rows += [runtime.decode(t) for t in (5, 6, 7, 8, 9, 10, 11, 12)]
    return np.stack(rows)


def test_mlx_int8_cache_takes_under_a_third_and_its_logits_stay_close(mlx_pair):
    runtimes = [load_runtime(p, max_context=256).runtime for p in mlx_pair]
    assert [r.kv_bits for r in runtimes] == [0, 8]
    logits = [_prompt_then_steps(r) for r in runtimes]
    # per position and group of 32 channels: 32 codes and a float32 scale and bias, against 32 float32
    assert runtimes[1].kv_nbytes * 128 == runtimes[0].kv_nbytes * (32 + 8)
    error = np.abs(logits[1] - logits[0]).max() / np.abs(logits[0]).max()
    assert 0 < error < TOLERANCE
    assert np.mean(logits[1].argmax(-1) == logits[0].argmax(-1)) >= 0.75


def test_mlx_int8_cache_is_recorded_verified_and_speculation_stays_exact(mlx_pair):
    engine = edgekit.load(mlx_pair[1], profile=None)
    assert engine.manifest.kv_bits == 8
    assert engine.manifest.verify["int8_kv_cache"]["top1_agreement"] >= 0.75
    prompt = [int(t) for t in np.random.default_rng(3).integers(3, 380, 16)]  # its answer repeats itself
    plain = engine.generate(prompt, max_new_tokens=96, ignore_eos=True)
    fast = engine.generate(prompt, max_new_tokens=96, ignore_eos=True, speculation="lookup")
    assert fast.token_ids == plain.token_ids and fast.stats.accepted_tokens > 0


def test_mlx_int8_cache_in_a_batch_and_through_the_prefix_cache(mlx_pair):
    from edgekit.runtimes.base import prefill_slot
    from edgekit.runtimes.mlx_batch import MlxBatchRuntime

    single = load_runtime(mlx_pair[1], max_context=256).runtime
    expected = _prompt_then_steps(single)
    batch = MlxBatchRuntime(mlx_pair[1], 256, slots=2, kv_bits=8)
    batch.prepare()
    prompt = [int(t) for t in np.random.default_rng(3).integers(3, 380, 48)]
    rows = [prefill_slot(batch, 0, prompt)]
    stored = batch.read_kv(0, 0, 48)  # the codes and scales as stored, byte for byte
    batch.write_kv(1, 0, stored)
    assert np.array_equal(batch.read_kv(1, 0, 48), stored) and batch.lengths[1] == 48
    for token in (5, 6, 7, 8, 9, 10, 11, 12):
        out = batch.decode({0: token, 1: token})
        assert np.array_equal(out[0], out[1])  # the restored slot attends to the same bytes
        rows.append(out[0])
    assert np.abs(np.stack(rows) - expected).max() / np.abs(expected).max() < 1e-4


def test_mlx_int8_cache_needs_heads_its_groups_tile(tiny_models, tmp_path):
    pytest.importorskip("mlx.core")
    with pytest.raises(EdgekitError, match=r"groups of 64 or 32 channels of a head, and this model's head_dim is 16"):
        export(tiny_models["llama"], tmp_path / "mlx", format="mlx", recipe=FAST, kv_bits=8)
    assert not (tmp_path / "mlx").exists()


def test_export_command_reports_the_int8_cache_check(tmp_path):
    pytest.importorskip("mlx.core")
    from edgekit.testing import write_tiny_checkpoint

    source = write_tiny_checkpoint(tmp_path / "llama", "llama", hidden_size=128)
    out = tmp_path / "mlx-int8"
    args = ["export", str(source), "-o", str(out), "--format", "mlx", "-a", "rtn", "-g", "32", "--kv-bits", "8"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "verify: logits within" in result.output
    assert "verify, int8 KV cache: logits within" in result.output and "(tolerance 0.05)" in result.output
