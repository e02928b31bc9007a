"""Quantize a checkpoint layer by layer.

Only one decoder layer is held in float32 at a time. For calibrated algorithms, the calibration
hidden states are pushed through each layer twice: once with the float weights to collect the
Hessian H = X^T X of every projection input, then, after quantizing, through the quantized layer
so the next layer is calibrated on what it will really see (as GPTQ does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import EdgekitError
from ..families import EMBED, FINAL_NORM, FINAL_ROTATION, LM_HEAD, bias_of, layer_prefix, layer_weights
from ..reference import KVCache, ReferenceModel, lm_head_input
from ..sources.checkpoint import Checkpoint
from ..spec import ModelSpec, weight_shapes
from .awq import quantize_clipped, search_scales
from .gptq import GptqFactor, gptq_factor, quantize_gptq
from .hqq import quantize_hqq
from .recipe import CALIBRATED, GPTQ_ROUNDED, SCALED, Recipe, TensorRecipe
from .reorder import ReorderedResidual, intermediate_order, reorder_intermediate, residual_order
from .rotate import RotatedResidual, random_rotation
from .rtn import quantize_rtn
from .tensor import QuantizedTensor

Progress = Callable[[int, int, str], None]


class LayerTune(Protocol):
    """Called after layer n is quantized, before the calibration states go through it: may replace
    that layer's tensors in `quantized` by better ones, reading the layer's float weights (after AWQ's
    scaling), its norms and biases in `dense`, and the states entering it (distill/layer_tune.py)."""

    def __call__(
        self,
        n: int,
        float_weights: Mapping[str, np.ndarray],
        quantized: MutableMapping[str, QuantizedTensor],
        dense: MutableMapping[str, np.ndarray],
        hidden: list[np.ndarray],
    ) -> None: ...


@dataclass
class QuantizedModel:
    spec: ModelSpec
    quantized: MutableMapping[str, QuantizedTensor]  # a dict, or SpilledTensors on disk
    dense: dict[str, np.ndarray]  # norms (rescaled where AWQ folded scales into them), biases
    recipe: Recipe
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # per weight: what it got
    seconds: float = 0.0
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # per weight: parameters, bytes stored

    def _size(self, name: str) -> tuple[int, int]:
        if name not in self.sizes:
            qt = self.quantized[name]
            self.sizes[name] = (qt.shape[0] * qt.shape[1], qt.nbytes)
        return self.sizes[name]

    @property
    def parameter_count(self) -> int:
        return sum(self._size(n)[0] for n in self.quantized) + sum(a.size for a in self.dense.values())

    @property
    def nbytes(self) -> int:
        """Quantized weights as stored plus the remaining tensors at 2 bytes (float16)."""
        return sum(self._size(n)[1] for n in self.quantized) + 2 * sum(a.size for a in self.dense.values())

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.parameter_count

    def weights(self) -> DequantizedWeights:
        return DequantizedWeights(self)


class DequantizedWeights(Mapping[str, np.ndarray]):
    """The quantized model as float32 tensors under canonical names, dequantized on access."""

    def __init__(self, model: QuantizedModel):
        self.model = model

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.model.quantized:
            return self.model.quantized[name].dequantize()
        return self.model.dense[name]

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows of one weight, dequantizing (and, from spilled tensors, reading) only those."""
        quantized = self.model.quantized
        if name not in quantized:
            return self.model.dense[name][rows]
        take_rows = getattr(quantized, "take_rows", None)
        qt = take_rows(name, rows) if take_rows else quantized[name].take_rows(rows)
        return qt.dequantize()

    def __iter__(self) -> Iterator[str]:
        yield from self.model.quantized
        yield from self.model.dense

    def __len__(self) -> int:
        return len(self.model.quantized) + len(self.model.dense)


def quantize_tensor(
    w: np.ndarray, how: TensorRecipe, hessian: np.ndarray | None, factor: GptqFactor | None = None
) -> QuantizedTensor:
    """factor: GPTQ's factor of `hessian` (gptq_factor), when several weights or blocks of rows share it."""
    group = how.group_for(w.shape[1])
    if how.algorithm in GPTQ_ROUNDED and hessian is not None:
        qt = quantize_gptq(w, hessian, how.bits, group, how.symmetric, factor=factor)
        qt.algorithm = how.algorithm
        return qt
    if how.algorithm == "awq" and hessian is not None:
        return quantize_clipped(w, hessian, how.bits, group, how.symmetric)
    # Without activations (an untied embedding) a calibrated algorithm becomes HQQ. 8-bit HQQ falls
    # back to rounding: near lossless at 8 bits anyway, and its integer zero points take one byte a
    # group where HQQ's float16 ones would take two.
    if how.algorithm in ("hqq", *CALIBRATED) and how.bits == 4:
        return quantize_hqq(w, how.bits, group, how.symmetric)
    return quantize_rtn(w, how.bits, group, how.symmetric)


def _points(spec: ModelSpec, n: int) -> dict[str, list[str]]:
    """Projection inputs of layer n (as the reference names them) -> the weights reading them."""
    return layer_weights(spec, n).projection_inputs()


class _Hessians:
    """Accumulates the mean X^T X per projection input over calibration sequences, in float32 and
    in place: for a model's widest input (the down projection's) one K x K matrix is hundreds of MB."""

    COLUMNS = 1024

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.rows: dict[str, int] = {}
        self.normalized: set[str] = set()

    def __call__(self, name: str, x: np.ndarray) -> None:
        assert name not in self.normalized, "observed after its Hessian was read"
        x = np.asarray(x, dtype=np.float32)
        if name not in self.sums:
            self.sums[name] = np.zeros((x.shape[1], x.shape[1]), np.float32)
        total = self.sums[name]
        # the blocks on and above the diagonal, COLUMNS wide: no K x K temporary, half the products;
        # get() mirrors them below
        for c in range(0, x.shape[1], self.COLUMNS):
            e = c + self.COLUMNS
            total[:e, c:e] += x[:, :e].T @ x[:, c:e]
        self.rows[name] = self.rows.get(name, 0) + len(x)

    def get(self, name: str) -> np.ndarray | None:
        """The mean, normalized in place (no copy; read-only for callers): observing ends here."""
        if name not in self.sums:
            return None
        if name not in self.normalized:
            total = self.sums[name]
            for c in range(self.COLUMNS, total.shape[0], self.COLUMNS):
                total[c : c + self.COLUMNS, :c] = total[:c, c : c + self.COLUMNS].T
            total /= np.float32(self.rows[name])
            self.normalized.add(name)
        return self.sums[name]

    def drop(self, name: str) -> None:
        self.sums.pop(name, None)

    def reorder(self, name: str, order: np.ndarray) -> None:
        self.sums[name] = self.sums[name][np.ix_(order, order)]

    def rescale(self, name: str, s: np.ndarray) -> None:
        """The Hessian of the inputs divided by s (AWQ folded s into the layer before)."""
        h = self.sums[name]
        h /= s[:, None]
        h /= s[None, :]


def _fold_awq(spec: ModelSpec, n: int, w: dict[str, np.ndarray], point: str, s: np.ndarray) -> None:
    """Scale the columns of the weights reading `point` by s and divide whatever produces that
    input by s, so the layer computes the same function."""
    lw = layer_weights(spec, n)
    for name in lw.projection_inputs()[point]:
        w[name] = w[name] * s[None, :]
    if point == lw.qkv_input:
        w[lw.input_norm] = w[lw.input_norm] / s
    elif point == lw.gate_up_input:
        w[lw.post_norm] = w[lw.post_norm] / s
    elif point == lw.o_input:  # attention output = probs @ v: scale v's rows
        s_kv = s.reshape(spec.num_kv_heads, -1, spec.head_dim)[:, 0].reshape(-1)
        _divide_rows(w, lw.v, slice(spec.q_size + spec.kv_size, None) if spec.fused_qkv else slice(None), s_kv)
    elif point == lw.down_input:  # act(gate) * up: scale up's rows
        rows = slice(spec.intermediate_size, None) if spec.fused_gate_up else slice(None)
        _divide_rows(w, lw.up, rows, s)


def _divide_rows(w: dict[str, np.ndarray], weight: str, rows: slice, s: np.ndarray) -> None:
    """Divide rows `rows` of a weight (and of its bias, if any) by s."""
    w[weight] = w[weight].copy()
    w[weight][rows] /= s[:, None]
    bias = bias_of(weight)
    if bias in w:
        w[bias] = w[bias].copy()
        w[bias][rows] /= s


def _awq_rms(spec: ModelSpec, point: str, hessian: np.ndarray) -> np.ndarray | None:
    """For o_proj the scale must be shared by the heads reading one kv head (it is folded into v)."""
    if not point.endswith(".self_attn.o_proj"):
        return None
    d = np.diag(hessian).reshape(spec.num_kv_heads, -1, spec.head_dim).mean(axis=1)
    return np.repeat(d[:, None, :], spec.num_heads // spec.num_kv_heads, axis=1).reshape(-1)


def _shared_factor(hows: list[TensorRecipe], hessian: np.ndarray | None) -> GptqFactor | None:
    """GPTQ's factor of the Hessian that several weights (q/k/v, gate/up) or blocks of rows read,
    computed once for all of them when each is GPTQ-rounded in the same group size; else None."""
    if hessian is None or any(how.algorithm not in GPTQ_ROUNDED for how in hows):
        return None
    groups = {how.group_for(hessian.shape[0]) for how in hows}
    return gptq_factor(hessian, groups.pop()) if len(groups) == 1 else None


ROW_BLOCK = 2048  # output rows quantized at a time for the big matrices (embedding, lm_head)


def _quantize_by_rows(store, name: str, how: TensorRecipe, hessian: np.ndarray | None) -> QuantizedTensor:
    """Every algorithm used here treats output rows independently (AWQ's scales, which do not, are
    folded before), so a vocabulary-sized matrix is quantized a block of rows at a time, into
    arrays allocated once."""
    n = store.infos()[name].shape[0]
    factor = _shared_factor([how], hessian)  # factored once, not per block
    whole: QuantizedTensor | None = None
    for start in range(0, n, ROW_BLOCK):
        stop = min(n, start + ROW_BLOCK)
        part = quantize_tensor(store.rows(name, start, stop), how, hessian, factor)
        if whole is None:
            zeros = None if part.zeros is None else np.empty((n, part.zeros.shape[1]), np.float32)
            whole = QuantizedTensor(
                np.empty((n, part.codes.shape[1]), np.uint8),
                np.empty((n, part.scales.shape[1]), np.float32),
                zeros,
                part.bits,
                part.group_size,
                (n, part.shape[1]),
                part.algorithm,
            )
        whole.codes[start:stop], whole.scales[start:stop] = part.codes, part.scales
        if whole.zeros is not None:
            whole.zeros[start:stop] = part.zeros
    store.release(name)
    assert whole is not None
    return whole


def quantize_checkpoint(
    checkpoint: Checkpoint,
    recipe: Recipe,
    calibration: list[list[int]] | None = None,
    progress: Progress | None = None,
    into: MutableMapping[str, QuantizedTensor] | None = None,
    tune_layer: LayerTune | None = None,
) -> QuantizedModel:
    """into: where the quantized tensors go (default a dict; SpilledTensors keeps them on disk).
    tune_layer: run on each decoder layer once it is quantized (calibrated recipes only).
    The recipe is taken as it is: a rotate_residual left at None rotates nothing here (export and
    eval decide it by the runtime, Recipe.with_rotation)."""
    spec, store = checkpoint.spec, checkpoint.tensors
    start = time.perf_counter()
    if recipe.reorder_residual:
        store = ReorderedResidual(spec, store, residual_order(spec, store))
    final_rotation = None  # a tied model's projection after the final norm, when the stream is rotated
    if recipe.rotate_residual:
        rotated = RotatedResidual(spec, store, random_rotation(spec.hidden_size, recipe.rotation_seed))
        store, final_rotation = rotated, rotated.final_rotation()
    names = weight_shapes(spec)
    recipe.check_overrides(names)
    calibrate = recipe.needs_calibration
    if calibrate and not calibration:
        raise EdgekitError(
            f"the {recipe.algorithm} algorithm needs calibration token sequences; pass calibration= "
            "(edgekit.quant.calibration.calibration_sequences makes them from a text or from the model)"
        )
    runner = ReferenceModel(spec, store, layers=False, head=False)
    hidden: list[np.ndarray] = []
    if calibrate:
        hidden = [runner.embedding(store.take(EMBED, np.asarray(ids))) for ids in calibration]
    quantized: MutableMapping[str, QuantizedTensor] = into if into is not None else {}
    dense: dict[str, np.ndarray] = {}
    records: dict[str, dict[str, Any]] = {}
    sizes: dict[str, tuple[int, int]] = {}

    def put(
        name: str,
        w: np.ndarray | None,
        hessian: np.ndarray | None,
        how: TensorRecipe | None = None,
        factor: GptqFactor | None = None,
    ) -> None:
        """Quantize w, or (None) the stored tensor `name` block of rows by block of rows; `how`: the
        recipe's for_tensor unless given; factor: GPTQ's factor of `hessian`, when shared."""
        how = how or recipe.for_tensor(name, spec.num_layers)
        qt = quantize_tensor(w, how, hessian, factor) if w is not None else _quantize_by_rows(store, name, how, hessian)
        quantized[name] = qt
        sizes[name] = (qt.shape[0] * qt.shape[1], qt.nbytes)
        w_shape = qt.shape
        records[name] = {
            "bits": qt.bits,
            "group_size": qt.group_size,
            "algorithm": qt.algorithm,
            "symmetric": qt.symmetric,
        }
        if qt.group_size != how.group_size:
            records[name]["fallback"] = f"input size {w_shape[1]} is not a multiple of {how.group_size}"
        elif w_shape[1] % qt.group_size:
            records[name]["fallback"] = f"last group padded (input size {w_shape[1]})"

    steps = spec.num_layers + 2
    for n in range(spec.num_layers):
        if progress:
            progress(n, steps, f"layer {n}")
        p = layer_prefix(n)
        w = {k: np.array(store.get(k), dtype=np.float32) for k in names if k.startswith(p)}
        for k in w:
            store.release(k)
        points = _points(spec, n)
        # On a rotated stream AWQ scales only the inputs the rotation does not reach (o_proj's and
        # down_proj's): scales on the stream's readers, fitted to the calibration text, cost GPTQ
        # held-out quality (README, Quality without a calibration file)
        lw = layer_weights(spec, n)
        rotated_inputs = {lw.qkv_input, lw.gate_up_input} if recipe.rotate_residual else set()
        hessians = _Hessians()
        if calibrate:
            layer = runner.build_layer(w, n)
            for h in hidden:
                runner.layer_forward(n, h, KVCache(spec), observe=hessians, layer=layer)
            del layer
        for point, targets in points.items():
            hessian = hessians.get(point)
            if point in rotated_inputs:
                continue
            if hessian is not None and any(recipe.for_tensor(t, spec.num_layers).algorithm in SCALED for t in targets):
                how = recipe.for_tensor(targets[0], spec.num_layers)
                group = how.group_for(hessian.shape[0])
                s = search_scales(
                    [w[t] for t in targets],
                    hessian,
                    lambda m, how=how, group=group: quantize_rtn(m, how.bits, group, how.symmetric),
                    rms=_awq_rms(spec, point, hessian),
                )
                _fold_awq(spec, n, w, point, s)
                hessians.rescale(point, s)
        if recipe.reorder_intermediate:
            order = intermediate_order(w[lw.down])
            reorder_intermediate(spec, n, w, order)
            if lw.down_input in hessians.sums:
                hessians.reorder(lw.down_input, order)
        float_layer = dict(w) if tune_layer and calibrate else None
        for point, targets in points.items():
            hessian = hessians.get(point)
            factor = _shared_factor([recipe.for_tensor(t, spec.num_layers) for t in targets], hessian)
            for t in targets:
                put(t, w.pop(t), hessian, factor=factor)
            hessians.drop(point)
        dense.update(w)  # what is left: norms, biases
        if float_layer is not None and tune_layer is not None:
            tune_layer(n, float_layer, quantized, dense, hidden)
        del float_layer
        # Loop variables outlive an iteration: without these dels the float layers and Hessians of
        # layer n would still be held while layer n + 1 is loaded.
        del w, hessians, hessian
        if calibrate:
            qlayer = runner.build_layer(DequantizedWeights(QuantizedModel(spec, quantized, dense, recipe)), n)
            for i, h in enumerate(hidden):  # in place: the states before and after never both whole
                hidden[i] = runner.layer_forward(n, h, KVCache(spec), layer=qlayer)
            del qlayer

    if progress:
        progress(spec.num_layers, steps, "embedding / lm_head")
    norm = np.array(store.get(FINAL_NORM), dtype=np.float32)
    if final_rotation is not None:  # at 8 bits: read every token, and near exact (a tied lm_head's input)
        put(FINAL_ROTATION, final_rotation, None, TensorRecipe(8, recipe.group_size, "rtn", False, recipe.whole_groups))
        final_rotation = quantized[FINAL_ROTATION].dequantize()
    head_hessian = None  # the lm_head's input: the final norm of the calibration states
    if calibrate:
        hs = _Hessians()
        for h in hidden:
            hs("lm_head", lm_head_input(h, norm, final_rotation, spec.rms_norm_eps))
        head_hessian = hs.get("lm_head")
        hidden.clear()
    if not spec.tie_word_embeddings:
        put(LM_HEAD, None, head_hessian)
    dense[FINAL_NORM] = norm
    put(EMBED, None, head_hessian if spec.tie_word_embeddings else None)
    if progress:
        progress(steps, steps, "done")
    return QuantizedModel(spec, quantized, dense, recipe, records, time.perf_counter() - start, sizes)
