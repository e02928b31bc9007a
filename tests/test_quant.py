"""Quantization algorithms, recipes and the layer-by-layer pipeline on tiny random models."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from helpers import ALL_FAMILIES, rel_err

from edgekit.errors import EdgekitError
from edgekit.evaluate import evaluate
from edgekit.families import EMBED, FINAL_NORM, FINAL_ROTATION, layer_weights
from edgekit.quant.awq import output_error, quantize_clipped, search_scales
from edgekit.quant.calibration import read_text, token_windows
from edgekit.quant.gptq import _inverse_cholesky_upper, gptq_factor, gptq_sweep, quantize_gptq
from edgekit.quant.hqq import quantize_hqq
from edgekit.quant.pipeline import _fold_awq, _points, quantize_checkpoint
from edgekit.quant.recipe import Recipe, edge_layers
from edgekit.quant.reorder import ReorderedResidual, intermediate_order, reorder_intermediate, residual_order
from edgekit.quant.rotate import RotatedResidual, random_rotation
from edgekit.quant.rtn import quantize_rtn
from edgekit.quant.tensor import grouped, layer_group, minmax_params, searched_params
from edgekit.reference import KVCache, ReferenceModel
from edgekit.sources import open_checkpoint
from edgekit.testing import write_tiny_checkpoint
from edgekit.testing.offgrid import DictStore, off_grid_copy

RNG = np.random.default_rng(0)
PROMPT = [int(i) for i in RNG.integers(3, 380, 48)]


@pytest.fixture(scope="module")
def layer_problem():
    """A weight and calibration inputs with correlated channels of very different magnitudes."""
    rng = np.random.default_rng(1)
    k, n = 256, 96
    mix = rng.standard_normal((k, k)) / np.sqrt(k) + np.eye(k)
    x = (rng.standard_normal((2048, k)) @ mix * np.exp(rng.standard_normal(k))).astype(np.float32)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    return w, (x.T.astype(np.float64) @ x / len(x)).astype(np.float32)


@pytest.mark.parametrize("k", [300, 1100])  # one block and several, neither a multiple of the block
def test_gptq_blocked_float32_inverse_cholesky_matches_float64(k):
    rng = np.random.default_rng(k)
    x = (rng.standard_normal((2 * k, k)) * rng.uniform(0.1, 3, k)).astype(np.float32)
    x[:, 7] = 0.0  # an input never active
    h = x.T @ x / np.float32(2 * k)
    order = np.argsort(-np.diag(h), kind="stable")
    dead = np.diag(h) == 0
    before = h.copy()
    u = _inverse_cholesky_upper(h, order, dead, 0.01)
    expected = h[np.ix_(order, order)].astype(np.float64)
    expected[dead[order], dead[order]] = 1.0
    expected[np.diag_indices(k)] += 0.01 * np.mean(np.diag(expected))
    expected = np.linalg.cholesky(np.linalg.inv(expected)).T  # upper, U^T U = H^-1
    assert rel_err(u, expected) < 1e-5 and np.array_equal(np.triu(u), u)
    assert np.array_equal(h, before)  # the caller's Hessian is left alone


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [False, True])
def test_calibrated_algorithms_beat_rtn_on_output_error(layer_problem, group, symmetric):
    w, h = layer_problem
    rtn = output_error(w, quantize_rtn(w, 4, group, symmetric).dequantize(), h)
    gptq = output_error(w, quantize_gptq(w, h, 4, group, symmetric).dequantize(), h)
    s = search_scales([w], h, lambda m: quantize_rtn(m, 4, group, symmetric))
    awq_qt = quantize_clipped(w * s, h / np.outer(s, s), 4, group, symmetric)
    awq = output_error(w, awq_qt.dequantize() / s, h)
    assert gptq < 0.9 * rtn
    assert awq < 0.9 * rtn


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [False, True])
def test_gptq_weighted_grid_lowers_the_output_error(layer_problem, group, symmetric):
    """Static-group ranges searched with each input weighted by its activation energy (the default)
    against every input alike."""
    w, h = layer_problem
    plain = quantize_gptq(w, h, 4, group, symmetric, weighted_grid=False)
    weighted = quantize_gptq(w, h, 4, group, symmetric)
    assert weighted.shape == plain.shape and weighted.codes.shape == plain.codes.shape
    assert output_error(w, weighted.dequantize(), h) < 0.95 * output_error(w, plain.dequantize(), h)


@pytest.mark.parametrize("group", [32, 128])
def test_gptq_lazy_updates_match_one_input_at_a_time(layer_problem, group):
    """quantize_gptq pushes each input's rounding error on in slices, blocks and the rest; GPTQ's
    definition pushes it onto every input not yet rounded at once. Same static groups, same codes
    (float rounding may move a code on a tie)."""
    w, h = layer_problem
    qt = quantize_gptq(w, h, 4, group)
    factor = gptq_factor(h, group)
    rest = w[:, factor.order].astype(np.float64)  # the factor's order (k is a multiple of the group)
    u = factor.hinv.astype(np.float64)
    scales, zeros = qt.scales[:, factor.order // group], qt.zeros[:, factor.order // group]
    codes = np.zeros(w.shape, np.uint8)
    for i in range(w.shape[1]):
        q = np.clip(np.rint(rest[:, i] / scales[:, i] + zeros[:, i]), 0, 15)
        codes[:, factor.order[i]] = q
        err = (rest[:, i] - (q - zeros[:, i]) * scales[:, i]) / u[i, i]
        rest[:, i + 1 :] -= np.outer(err, u[i, i + 1 :])
    assert np.mean(codes != qt.codes) < 1e-3


def test_gptq_sweep_takes_any_grid(layer_problem):
    """gptq_sweep with another rounding step (a fixed non-uniform grid, one scale per output row)
    lowers the output error against rounding each weight to the nearest level of the same grid, and
    hands the step every input once, in visiting order."""
    w, h = layer_problem
    levels = np.array([-1.0, -0.6, -0.35, -0.15, 0.0, 0.15, 0.35, 0.6, 1.0], np.float32)
    scale = np.abs(w).max(axis=1)

    def nearest(values: np.ndarray) -> np.ndarray:
        return levels[np.abs(values[:, None] / scale[:, None] - levels[None, :]).argmin(axis=1)] * scale

    factor = gptq_factor(h, 32)
    weights = w.T[factor.order].copy()
    seen: list[int] = []
    rounded = np.zeros_like(weights)

    def round_input(i: int, w_i: np.ndarray) -> np.ndarray:
        seen.append(i)
        rounded[i] = nearest(w_i)
        return rounded[i]

    gptq_sweep(weights, factor.hinv, round_input)
    swept = np.empty_like(w)
    swept[:, factor.order] = rounded.T
    plain = np.stack([nearest(column) for column in w.T], axis=1)
    assert seen == list(range(w.shape[1]))
    assert output_error(w, swept, h) < 0.8 * output_error(w, plain, h)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("norm", [2.0, 2.4])
def test_range_search_finds_each_groups_best_shrink(symmetric, norm):
    """searched_params against trying every shrink factor on every group, one at a time."""
    rng = np.random.default_rng(4)
    wg = grouped(rng.standard_t(3, (40, 96)).astype(np.float32), 32)
    importance = rng.uniform(0.1, 2.0, (1, 3, 32)).astype(np.float32)
    scales, zeros = searched_params(wg, 4, symmetric, importance, norm, grid=6, max_shrink=0.3, rows=16)
    for r, g in np.ndindex(wg.shape[:2]):
        errors = []
        for shrink in np.linspace(1.0, 0.7, 6):
            s, z = minmax_params(wg[r : r + 1, g : g + 1] * np.float32(shrink), 4, symmetric)
            z = np.full(s.shape, 8, np.float32) if z is None else z
            q = np.clip(np.rint(wg[r, g] / s[0, 0] + z[0, 0]), 0, 15)
            errors.append((np.sum(np.abs((q - z[0, 0]) * s[0, 0] - wg[r, g]) ** norm * importance[0, g]), s[0, 0]))
        assert scales[r, g] == min(errors, key=lambda e: e[0])[1]


@pytest.mark.parametrize("group", [32, 64, 128])
def test_hqq_beats_rtn_on_its_objective(group):
    w = np.random.default_rng(2).standard_t(3, (64, 256)).astype(np.float32)  # heavy tails
    for symmetric in (False, True):
        rtn = np.abs(quantize_rtn(w, 4, group, symmetric).dequantize() - w).sum()
        hqq = np.abs(quantize_hqq(w, 4, group, symmetric).dequantize() - w).sum()
        assert hqq < rtn


def test_codes_scales_and_sizes():
    w = np.random.default_rng(3).standard_normal((10, 96)).astype(np.float32)
    qt = quantize_rtn(w, 4, 32)
    assert qt.codes.dtype == np.uint8 and qt.codes.max() <= 15 and qt.scales.shape == (10, 3)
    assert np.array_equal(qt.scales, qt.scales.astype(np.float16).astype(np.float32))
    assert qt.bits_per_weight == pytest.approx(4 + 16 / 32 + 4 / 32 + 4 / 96)  # odd group count pads a nibble
    assert quantize_rtn(w, 8, 32, symmetric=True).bits_per_weight == pytest.approx(8.5)
    assert np.abs(quantize_rtn(w, 8, 32).dequantize() - w).max() < 0.02


def test_group_fallback():
    assert layer_group(576, 128) == 128 and layer_group(96, 64) == 64  # padded last block
    assert layer_group(576, 128, whole=True) == 64 and layer_group(96, 64, whole=True) == 32
    assert layer_group(200, 64, whole=True) == 64  # no supported group divides 200: padded
    qt = quantize_rtn(np.ones((2, 200), np.float32), 4, 64)  # no group divides 200: padded
    assert qt.codes.shape == (2, 256) and qt.dequantize().shape == (2, 200)


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"algorithm": "magic"}, "unknown quantization algorithm 'magic'"),
        ({"group_size": 48}, "group size 48"),
        ({"bits": 3}, "bits=3"),
        ({"overrides": {"*down_proj": {"bitz": 8}}}, "unknown keys"),
    ],
)
def test_bad_recipes(bad, match):
    with pytest.raises(EdgekitError, match=match):
        Recipe(**bad)


def test_recipe_classes_and_overrides():
    r = Recipe(bits=4, embedding_bits=8, overrides={"model.layers.0.mlp.down_proj": {"bits": 8}})
    assert r.for_tensor("model.embed_tokens.weight").bits == 8
    assert r.for_tensor("model.embed_tokens.weight").algorithm == "gptq"  # on the tied lm_head's inputs
    assert Recipe(algorithm="rtn").for_tensor("model.embed_tokens.weight").algorithm == "rtn"
    assert r.for_tensor("model.layers.0.mlp.down_proj.weight").bits == 8
    assert r.for_tensor("model.layers.1.mlp.down_proj.weight").bits == 4


def test_edge_layers_down_projection_bits():
    assert edge_layers(30) == [0, 1, 2, 3, 27, 28, 29] and edge_layers(16) == [0, 1, 14, 15]
    assert edge_layers(2) == [0] and edge_layers(9) == [0, 1, 8]
    down = "model.layers.{}.mlp.down_proj.weight"
    r = Recipe()
    assert [r.for_tensor(down.format(n), 30).bits for n in (0, 3, 4, 26, 27, 29)] == [8, 8, 4, 4, 8, 8]
    assert r.for_tensor(down.format(0)).bits == 4  # without the layer count, no edge layers
    assert r.for_tensor("model.layers.0.mlp.up_proj.weight", 30).bits == 4
    assert r.for_tensor("model.layers.0.self_attn.o_proj.weight", 30).bits == 4
    assert Recipe(edge_down_bits=None).for_tensor(down.format(0), 30).bits == 4
    assert Recipe(overrides={"*.down_proj": {"bits": 4}}).for_tensor(down.format(0), 30).bits == 4  # overrides win
    assert Recipe.from_record(r.to_dict()) == r
    before = {k: v for k, v in r.to_dict().items() if k != "edge_down_bits"}  # a manifest from before the field
    assert Recipe.from_record(before).edge_down_bits is None


def test_key_projection_bits():
    key = "model.layers.{}.self_attn.k_proj.weight"
    assert Recipe().for_tensor(key.format(0), 30).bits == 4  # opt-in
    r = Recipe(key_bits=8)
    assert [r.for_tensor(key.format(n), 30).bits for n in (0, 15, 29)] == [8, 8, 8]
    assert r.for_tensor(key.format(15)).bits == 8  # every layer: no layer count needed
    assert r.for_tensor("model.layers.0.self_attn.q_proj.weight", 30).bits == 4
    assert r.for_tensor("model.layers.0.self_attn.v_proj.weight", 30).bits == 4
    assert r.for_tensor("model.layers.0.self_attn.qkv_proj.weight", 30).bits == 4  # fused: one width
    assert Recipe(key_bits=None).for_tensor(key.format(0), 30).bits == 4
    assert Recipe(attention_bits=8, key_bits=4).for_tensor(key.format(0)).bits == 4
    assert Recipe(overrides={"*.k_proj": {"bits": 4}}).for_tensor(key.format(0)).bits == 4  # overrides win
    before = {k: v for k, v in r.to_dict().items() if k != "key_bits"}  # a manifest from before the field
    assert Recipe.from_record(before).key_bits is None
    with pytest.raises(EdgekitError, match="key_bits=3"):
        Recipe(key_bits=3)


def test_embedding_group_follows_the_recipe_up_to_64():
    group = lambda recipe: recipe.for_tensor("model.embed_tokens.weight").group_size  # noqa: E731
    assert group(Recipe()) == 64 and Recipe().for_tensor("model.layers.0.mlp.up_proj.weight").group_size == 128
    assert group(Recipe(group_size=32)) == 32
    assert group(Recipe(embedding_group_size=128)) == 128  # asked for explicitly


@pytest.mark.parametrize(
    "content,match", [(b"", "empty"), (b"\x00\x01binary", "not a text"), (b"\xff\xfe caf\xe9", "not UTF-8")]
)
def test_bad_calibration_files(tmp_path, content, match):
    path = tmp_path / "calib.txt"
    path.write_bytes(content)
    with pytest.raises(EdgekitError, match=match):
        read_text(path)
    with pytest.raises(EdgekitError, match="not found"):
        read_text(tmp_path / "missing.txt")


def test_token_windows():
    assert token_windows(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert token_windows(list(range(3)), 4) == [[0, 1, 2]]
    assert len(token_windows(list(range(100)), 4, count=5)) == 5


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_awq_folds_keep_the_layer_function(tiny_models, family):
    checkpoint = open_checkpoint(tiny_models[family])
    spec = checkpoint.spec
    runner = ReferenceModel(spec, checkpoint.tensors, layers=False, head=False)
    w = {k: np.array(checkpoint.tensors.get(k)) for k in checkpoint.tensors if k.startswith("model.layers.0.")}
    h = np.random.default_rng(0).standard_normal((12, spec.hidden_size)).astype(np.float32)
    before = runner.layer_forward(0, h, KVCache(spec), layer=runner.build_layer(w, 0))
    rng = np.random.default_rng(1)
    for point in _points(spec, 0):
        size = (
            spec.intermediate_size
            if point.endswith("down_proj")
            else (spec.q_size if point.endswith("o_proj") else spec.hidden_size)
        )
        s = np.exp(rng.standard_normal(size)).astype(np.float32)
        if point.endswith("o_proj"):  # shared by the heads of one kv head
            s = np.repeat(
                s.reshape(spec.num_kv_heads, -1, spec.head_dim)[:, :1], spec.num_heads // spec.num_kv_heads, axis=1
            ).reshape(-1)
        _fold_awq(spec, 0, w, point, s)
    after = runner.layer_forward(0, h, KVCache(spec), layer=runner.build_layer(w, 0))
    assert rel_err(after, before) < 1e-5


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_off_grid_copy_computes_the_same_function(tiny_models, family):
    checkpoint = open_checkpoint(tiny_models[family])
    copy = off_grid_copy(checkpoint)
    name = "model.layers.0.mlp.down_proj.weight"
    assert not np.allclose(copy.tensors.get(name), checkpoint.tensors.get(name))
    ours = ReferenceModel.from_checkpoint(copy).forward(PROMPT)
    assert rel_err(ours, ReferenceModel.from_checkpoint(checkpoint).forward(PROMPT)) < 1e-4


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_reordered_channels_compute_the_same_function(tiny_models, family):
    checkpoint = open_checkpoint(tiny_models[family])
    spec = checkpoint.spec
    order = residual_order(spec, checkpoint.tensors)
    assert sorted(order) == list(range(spec.hidden_size)) and not np.array_equal(order, np.arange(spec.hidden_size))
    store = ReorderedResidual(spec, checkpoint.tensors, order)
    embedding = np.asarray(checkpoint.tensors.get("model.embed_tokens.weight"))
    assert np.array_equal(store.rows("model.embed_tokens.weight", 3, 9), embedding[3:9, order])
    assert np.array_equal(store.take("model.embed_tokens.weight", np.array([5, 1])), embedding[[5, 1]][:, order])
    source = ReferenceModel.from_checkpoint(checkpoint).forward(PROMPT)
    assert rel_err(ReferenceModel(spec, store).forward(PROMPT), source) < 1e-5
    tensors = {name: np.array(store.get(name)) for name in store}
    for n in range(spec.num_layers):
        down = tensors[f"model.layers.{n}.mlp.down_proj.weight"]
        order = intermediate_order(down)
        assert not np.array_equal(order, np.arange(spec.intermediate_size))
        reorder_intermediate(spec, n, tensors, order)
    assert rel_err(ReferenceModel(spec, DictStore(tensors)).forward(PROMPT), source) < 1e-5


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_pipeline_reorders_channels_without_changing_the_function(tiny_models, family):
    """8 bits: what is left of the difference is rounding, not a channel out of place."""
    checkpoint = open_checkpoint(tiny_models[family])
    source = ReferenceModel.from_checkpoint(checkpoint).forward(PROMPT)
    order = residual_order(checkpoint.spec, checkpoint.tensors)
    recipe = Recipe(
        algorithm="gptq",
        bits=8,
        group_size=32,
        embedding_bits=8,
        reorder_residual=True,
        reorder_intermediate=True,
    )
    qm = quantize_checkpoint(checkpoint, recipe, [PROMPT[:32], PROMPT[16:]])
    norm = np.asarray(checkpoint.tensors.get("model.layers.1.post_attention_layernorm.weight"))
    assert np.array_equal(qm.dense["model.layers.1.post_attention_layernorm.weight"], norm[order])
    embedding = np.asarray(checkpoint.tensors.get("model.embed_tokens.weight"))
    moved = embedding[:, order]
    assert rel_err(qm.weights()["model.embed_tokens.weight"], moved) < 1e-2 < rel_err(moved, embedding)
    assert rel_err(ReferenceModel(checkpoint.spec, qm.weights()).forward(PROMPT), source) < 3e-2


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_rotated_residual_computes_the_same_function(tmp_path, family, tied):
    checkpoint = open_checkpoint(write_tiny_checkpoint(tmp_path / "hf", family, tie_word_embeddings=tied))
    spec = checkpoint.spec
    assert spec.tie_word_embeddings == tied
    rotation = random_rotation(spec.hidden_size)
    assert rel_err(rotation @ rotation.T, np.eye(spec.hidden_size, dtype=np.float32)) < 1e-5
    store = RotatedResidual(spec, checkpoint.tensors, rotation)
    embedding = np.asarray(checkpoint.tensors.get(EMBED))
    assert rel_err(store.rows(EMBED, 3, 9), embedding[3:9] @ rotation) < 1e-6
    assert rel_err(store.take(EMBED, np.array([5, 1])), embedding[[5, 1]] @ rotation) < 1e-6
    assert np.array_equal(store.get(FINAL_NORM), np.ones(spec.hidden_size, np.float32))
    tensors = {name: np.array(store.get(name)) for name in store}
    final = store.final_rotation()
    assert (final is not None) == tied
    if final is not None:
        tensors[FINAL_ROTATION] = final
    source = ReferenceModel.from_checkpoint(checkpoint).forward(PROMPT)
    assert rel_err(ReferenceModel(spec, tensors).forward(PROMPT), source) < 1e-4
    down = "model.layers.0.mlp.down_proj.weight"
    assert rel_err(tensors[down], np.asarray(checkpoint.tensors.get(down))) > 0.5  # the weights did move


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_pipeline_rotates_without_changing_the_function(tmp_path, family):
    """8 bits: what is left of the difference is rounding; a tied model's final matrix is kept dense."""
    checkpoint = open_checkpoint(write_tiny_checkpoint(tmp_path / "hf", family, tie_word_embeddings=True))
    source = ReferenceModel.from_checkpoint(checkpoint).forward(PROMPT)
    recipe = Recipe(algorithm="awq-gptq", bits=8, group_size=32, embedding_bits=8, rotate_residual=True)
    qm = quantize_checkpoint(checkpoint, recipe, [PROMPT[:32], PROMPT[16:]])
    rotation = qm.quantized[FINAL_ROTATION]
    assert rotation.shape == (checkpoint.spec.hidden_size,) * 2 and rotation.bits == 8
    for n in range(checkpoint.spec.num_layers):  # AWQ leaves the rotated stream's readers unscaled
        lw = layer_weights(checkpoint.spec, n)
        for norm in (lw.input_norm, lw.post_norm):
            assert np.array_equal(qm.dense[norm], np.ones(checkpoint.spec.hidden_size, np.float32))
    assert rel_err(ReferenceModel(checkpoint.spec, qm.weights()).forward(PROMPT), source) < 3e-2
    reseeded = quantize_checkpoint(checkpoint, replace(recipe, rotation_seed=1), [PROMPT[:32], PROMPT[16:]])
    assert not np.array_equal(reseeded.quantized[FINAL_ROTATION].codes, rotation.codes)
    assert rel_err(ReferenceModel(checkpoint.spec, reseeded.weights()).forward(PROMPT), source) < 3e-2
    with pytest.raises(EdgekitError, match="rotate_residual and reorder_residual"):
        Recipe(rotate_residual=True, reorder_residual=True)


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("algorithm", ["rtn", "hqq", "awq", "gptq", "awq-gptq"])
def test_pipeline_every_family_and_algorithm(tiny_models, family, algorithm):
    checkpoint = open_checkpoint(tiny_models[family])
    source = ReferenceModel.from_checkpoint(checkpoint)
    calibration = [PROMPT[:32], PROMPT[16:]]
    steps = []
    qm = quantize_checkpoint(
        checkpoint,
        Recipe(algorithm=algorithm, group_size=32),
        calibration,
        progress=lambda i, total, what: steps.append(what),
    )
    assert steps[0] == "layer 0" and steps[-1] == "done"
    assert set(qm.quantized) | set(qm.dense) == set(checkpoint.tensors)
    assert qm.records["model.layers.1.mlp.down_proj.weight"]["algorithm"] == algorithm
    assert qm.records["model.embed_tokens.weight"]["bits"] == 4
    layers = checkpoint.spec.num_layers
    down_bits = [qm.records[f"model.layers.{n}.mlp.down_proj.weight"]["bits"] for n in range(layers)]
    assert down_bits == [8 if n in edge_layers(layers) else 4 for n in range(layers)]
    quality = evaluate([PROMPT], ReferenceModel(checkpoint.spec, qm.weights()).forward, source.forward)
    assert quality.kl < 0.05 and quality.top1 > 0.5  # random tiny models have many near-ties
    # 8-bit everywhere is close to lossless
    q8 = quantize_checkpoint(
        checkpoint, Recipe(algorithm=algorithm, bits=8, group_size=32, embedding_bits=8), calibration
    )
    assert rel_err(ReferenceModel(checkpoint.spec, q8.weights()).forward(PROMPT), source.forward(PROMPT)) < 3e-2


def test_fallback_is_recorded(tmp_path):
    from edgekit.testing import write_tiny_checkpoint

    folder = write_tiny_checkpoint(
        tmp_path / "m", "llama", hidden_size=96, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2
    )
    checkpoint = open_checkpoint(folder)
    padded = quantize_checkpoint(checkpoint, Recipe(algorithm="rtn", group_size=64, whole_groups=False)).records
    assert padded["model.layers.0.self_attn.q_proj.weight"]["group_size"] == 64
    assert "last group padded" in padded["model.layers.0.self_attn.q_proj.weight"]["fallback"]
    whole = quantize_checkpoint(checkpoint, Recipe(algorithm="rtn", group_size=64, whole_groups=True)).records
    assert whole["model.layers.0.self_attn.q_proj.weight"]["group_size"] == 32
    assert "not a multiple of 64" in whole["model.layers.0.self_attn.q_proj.weight"]["fallback"]
    assert whole["model.layers.0.mlp.down_proj.weight"]["group_size"] == 32  # 160 = 5 x 32


def test_evaluate_against_itself():
    logits = np.random.default_rng(0).standard_normal((6, 11)).astype(np.float32)
    q = evaluate([[1, 2, 3, 4, 5, 6]], lambda ids: logits, lambda ids: logits)
    assert q.kl == pytest.approx(0, abs=1e-9) and q.top1 == 1.0 and q.tokens == 5
    uniform = evaluate([[1, 2, 3]], lambda ids: np.zeros((3, 11), np.float32))
    assert uniform.perplexity == pytest.approx(11)


def test_calibrated_algorithm_without_calibration_is_an_error(tiny_models):
    with pytest.raises(EdgekitError, match="needs calibration token sequences"):
        quantize_checkpoint(open_checkpoint(tiny_models["llama"]), Recipe(algorithm="gptq"))


def test_hessians_accumulate_by_column_blocks(monkeypatch):
    """Blocks on and above the diagonal, mirrored when read: X^T X over every observation, exactly."""
    from edgekit.quant.pipeline import _Hessians

    monkeypatch.setattr(_Hessians, "COLUMNS", 16)
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(30, 50)).astype(np.float32), rng.normal(size=(7, 50)).astype(np.float32)]
    hessians = _Hessians()
    for x in xs:
        hessians("point", x)
    expected = sum(x.T.astype(np.float64) @ x for x in xs) / 37
    np.testing.assert_allclose(hessians.get("point"), expected, rtol=1e-5, atol=1e-5)
    assert hessians.get("point") is hessians.get("point")  # normalized once, in place
