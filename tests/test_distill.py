"""Distillation and quantization-aware distillation on tiny random checkpoints (torch, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit.errors import EdgekitError
from edgekit.quant.recipe import Recipe
from edgekit.testing import FAMILY_CASES, write_tiny_checkpoint

torch = pytest.importorskip("torch")

from safetensors.numpy import load_file as read_safetensors  # noqa: E402

from edgekit.distill import distill  # noqa: E402
from edgekit.distill.student import plan_student  # noqa: E402
from edgekit.distill.torch_model import Decoder, Weights  # noqa: E402
from edgekit.distill.train import TrainConfig  # noqa: E402
from edgekit.sources import open_checkpoint  # noqa: E402

SHORT = {"samples": 8, "held_out": 2, "sequence_length": 32}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("teacher") / "llama", "llama", num_hidden_layers=4)


@pytest.mark.parametrize("case", sorted(FAMILY_CASES))
def test_torch_decoder_matches_the_numpy_reference(case, tmp_path):
    family = case.split("-")[0]
    checkpoint = open_checkpoint(write_tiny_checkpoint(tmp_path / case, family, **FAMILY_CASES[case]))
    ids = list(range(3, 60))
    want = edgekit.ReferenceModel.from_checkpoint(checkpoint).forward(ids)
    model = Decoder(checkpoint.spec, Weights({n: checkpoint.tensors.get(n) for n in checkpoint.tensors}))
    got = model(torch.tensor([ids])).detach().numpy()[0]
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5


def test_student_layers_are_spread_or_exact(teacher):
    spec = open_checkpoint(teacher).spec
    assert plan_student(spec, layers=2).keep_layers == [0, 3]
    assert plan_student(spec, keep_layers=[1, 2]).keep_layers == [1, 2]
    assert plan_student(spec, mlp_ratio=0.5).intermediate_size == spec.intermediate_size // 2
    for kwargs, message in [
        ({"layers": 5}, "cannot come from a teacher of 4"),
        ({"keep_layers": [0, 4]}, "out of range"),
        ({"keep_layers": [2, 1]}, "increasing"),
        ({"mlp_ratio": 1.5}, "never wider"),
        ({}, "the teacher itself"),
    ]:
        with pytest.raises(EdgekitError, match=message):
            plan_student(spec, **kwargs)


def test_kl_falls_monotonically_and_the_student_exports_to_onnx_and_mlx(teacher, tmp_path):
    config = TrainConfig(steps=8, batch_size=8, learning_rate=1e-3, warmup=1)  # one full batch per step
    result = distill(teacher, tmp_path / "student", layers=2, mlp_ratio=0.5, config=config, **SHORT)
    assert all(b < a for a, b in zip(result.losses, result.losses[1:], strict=False)), result.losses
    assert result.after["kl"] < result.before["kl"]
    config_json = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config_json["num_hidden_layers"] == 2 and config_json["edgekit_distillation"]["keep_layers"] == [0, 3]
    for fmt in ("onnx", "mlx"):
        artifact = tmp_path / f"student-{fmt}"
        edgekit.export(tmp_path / "student", artifact, format=fmt, recipe=Recipe(algorithm="rtn"))
        done = edgekit.load(artifact, profile=None).generate("hello", max_new_tokens=4, ignore_eos=True)
        assert len(done.token_ids) == 4


def test_resume_continues_with_the_same_loss_curve(teacher, tmp_path):
    config = TrainConfig(steps=6, batch_size=4, learning_rate=1e-3, warmup=1, checkpoint_every=3)
    whole = distill(teacher, tmp_path / "whole", layers=2, config=config, **SHORT).losses

    def stop_at_step_4(step, total, info):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(teacher, tmp_path / "split", layers=2, config=config, progress=stop_at_step_4, **SHORT)
    assert not (tmp_path / "split").exists() and (tmp_path / ".split.distill" / "checkpoint.pt").is_file()
    resumed = distill(teacher, tmp_path / "split", layers=2, config=config, resume=True, **SHORT)
    np.testing.assert_allclose(resumed.losses, whole, rtol=1e-5)
    a = read_safetensors(tmp_path / "whole" / "model.safetensors")
    b = read_safetensors(tmp_path / "split" / "model.safetensors")
    assert all(np.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_torchrun_with_two_processes_equals_one_process(teacher, tmp_path):
    """gloo on CPU: each process takes half of every global batch of 4."""
    args = ["distill", str(teacher), "--layers", "2", "--steps", "4", "--batch-size", "4", "--lr", "1e-3"]
    args += ["--warmup", "1", "--samples", "8", "--held-out", "2", "--seq-len", "32"]
    single = subprocess.run(
        [sys.executable, "-m", "edgekit", *args, "-o", str(tmp_path / "one")], capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "edgekit"]
    double = subprocess.run([*run, *args, "-o", str(tmp_path / "two")], capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    a = read_safetensors(tmp_path / "one" / "model.safetensors")
    b = read_safetensors(tmp_path / "two" / "model.safetensors")
    assert sorted(a) == sorted(b)
    # Adam moves each weight by up to lr = 1e-3 per step; summing the batch in two halves changes
    # the gradients in their last float bits, which Adam's normalization can magnify to ~1e-5
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-4


def test_quantization_aware_distillation_trains_scales_and_norms(tmp_path):
    source = write_tiny_checkpoint(tmp_path / "llama", "llama")
    plain = edgekit.export(source, tmp_path / "plain", recipe=Recipe(algorithm="rtn"))
    config = TrainConfig(steps=12, batch_size=16, learning_rate=1e-3, warmup=1)
    qad = edgekit.export(source, tmp_path / "qad", recipe=Recipe(algorithm="rtn"), qad=config)
    recipe = json.loads((qad.output / "edgekit.json").read_text())["quantization"]["recipe"]
    record = recipe["qad"]
    assert recipe["rotate_residual"] is False  # rounded to nearest: the default does not rotate
    assert record["loss_last"] < record["loss_first"]
    assert qad.verify["checked"] and plain.verify["checked"]
    layers = json.loads((plain.output / "edgekit.json").read_text())["quantization"]["layers"]
    assert layers == json.loads((qad.output / "edgekit.json").read_text())["quantization"]["layers"]


@pytest.mark.parametrize("family", ["gemma", "qwen2"])  # a tied lm_head (the final matrix) and an untied one
def test_qad_trains_a_rotated_residual_stream(family, tmp_path):
    """The default rotates the stream where GPTQ rounds; QAD's student computes the rotated model's
    function (a tied model's final matrix included) and trains it; the artifact verifies."""
    from edgekit.families import FINAL_ROTATION
    from edgekit.quant.pipeline import quantize_checkpoint

    source = write_tiny_checkpoint(tmp_path / family, family)
    checkpoint = open_checkpoint(source)
    recipe = Recipe(algorithm="gptq", group_size=32, rotate_residual=True)
    ids = list(range(3, 40))
    qm = quantize_checkpoint(checkpoint, recipe, [ids])
    assert (FINAL_ROTATION in qm.quantized) == checkpoint.spec.tie_word_embeddings
    want = edgekit.ReferenceModel(checkpoint.spec, qm.weights()).forward(ids)
    student = Decoder(checkpoint.spec, Weights(qm.dense, dict(qm.quantized.items()), trainable=False))
    got = student(torch.tensor([ids])).detach().numpy()[0]
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
    config = TrainConfig(steps=12, batch_size=16, learning_rate=1e-3, warmup=1)
    qad = edgekit.export(source, tmp_path / "qad", recipe=Recipe(algorithm="gptq", group_size=32), qad=config)
    recipe_record = json.loads((qad.output / "edgekit.json").read_text())["quantization"]["recipe"]
    assert recipe_record["rotate_residual"] is True  # the default for a GPTQ-rounded ONNX cpu export
    assert recipe_record["qad"]["loss_last"] < recipe_record["qad"]["loss_first"]
    assert qad.verify["checked"] and qad.verify["top1_agreement"] == 1.0


def test_quantized_weight_round_trip_keeps_codes_and_integer_zero_points():
    from edgekit.distill.torch_model import QuantizedWeight
    from edgekit.quant.rtn import quantize_rtn

    qt = quantize_rtn(np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32), 4, 32)
    module = QuantizedWeight(qt)
    assert [n for n, _ in module.named_parameters()] == ["log_gain"]  # integer zero points stay fixed
    np.testing.assert_allclose(module().detach().numpy(), qt.dequantize(), rtol=1e-6)
    back = module.to_quantized()
    assert np.array_equal(back.codes, qt.codes) and np.array_equal(back.zeros, qt.zeros)


def test_bad_input_is_one_line_and_exit_2(teacher, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from edgekit.cli import cli

    out = tmp_path / "student"
    for extra, message in [
        (["--layers", "9"], "cannot come from a teacher of 4"),
        (["--keep-layers", "0,7"], "out of range"),
        (["--mlp-ratio", "2"], "never wider"),
        (["--layers", "2", "--data", str(tmp_path / "none.txt")], "no such file"),
    ]:
        result = CliRunner().invoke(cli, ["distill", str(teacher), "-o", str(out), *extra])
        assert result.exit_code == 2, result.output
        assert message in result.output and result.output.strip().splitlines()[-1].startswith("error: ")
        assert not out.exists()
    # QAD reads its text from the file after quantizing; a missing file is refused before any work
    missing = ["--qad-steps", "2", "-a", "rtn", "--calibration", str(tmp_path / "none.txt")]
    result = CliRunner().invoke(cli, ["export", str(teacher), "-o", str(out), *missing])
    assert result.exit_code == 2 and "calibration/evaluation text not found" in result.output
    assert "quantizing" not in result.output and not out.exists()
    monkeypatch.setitem(sys.modules, "torch", None)
    result = CliRunner().invoke(cli, ["distill", str(teacher), "-o", str(out), "--layers", "2"])
    assert result.exit_code == 2 and "pip install 'edgekit[distill]'" in result.output


def test_export_chains_distill_quantize_emit(teacher, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    out = tmp_path / "artifact"
    result = CliRunner().invoke(
        cli, ["export", str(teacher), "-o", str(out), "--distill-layers", "2", "--distill-steps", "3", "-a", "rtn"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "edgekit.json").read_text())
    assert manifest["spec"]["num_layers"] == 2
    assert not (tmp_path / ".artifact.student").exists()
    assert edgekit.load(out, profile=None).generate("hi", max_new_tokens=3, ignore_eos=True).stats.generated_tokens == 3


class _Bigram(torch.nn.Module):
    """logits [B, T, V] from a table: the smallest model train() can distill."""

    def __init__(self, vocab: int, seed: int):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)))

    def forward(self, ids):
        return self.table[ids]


def test_early_stopping_restores_the_best_scored_weights_and_time_limit_stops():
    from edgekit.distill.train import train

    data = [list(np.random.default_rng(0).integers(0, 16, 12)) for _ in range(8)]
    student, teacher = _Bigram(16, 1), _Bigram(16, 2)
    seen, scores = {}, iter([5.0, 4.0, 2.0, 3.0, 6.0, 7.0])

    def validate(step):
        seen[step] = student.table.detach().clone()
        return next(scores)

    config = TrainConfig(steps=10, batch_size=2, learning_rate=1e-1, warmup=1, eval_every=2)
    losses = train(student, teacher, [student.table], data, config, Path("/nonexistent"), validate=validate)
    assert len(losses) == 10 and sorted(seen) == [0, 2, 4, 6, 8, 10]
    assert torch.equal(student.table, seen[4]) and not torch.equal(seen[4], seen[10])  # step 4 scored best

    student = _Bigram(16, 1)
    config = TrainConfig(steps=10, batch_size=2, learning_rate=1e-1, warmup=1, time_limit=1e-9)
    assert len(train(student, teacher, [student.table], data, config, Path("/nonexistent"))) == 1


def test_parameter_groups_scale_the_learning_rate():
    from edgekit.distill.train import train

    data = [list(np.random.default_rng(0).integers(0, 16, 12)) for _ in range(4)]
    teacher, a, b = _Bigram(16, 2), _Bigram(16, 1), _Bigram(16, 1)
    config = TrainConfig(steps=1, batch_size=2, learning_rate=1e-2, warmup=1)
    train(a, teacher, [a.table], data, config, Path("/nonexistent"))
    train(b, teacher, [{"params": [b.table], "lr_scale": 3.0}], data, config, Path("/nonexistent"))
    start = _Bigram(16, 1).table.detach()
    moved_a, moved_b = (a.table.detach() - start).abs().max(), (b.table.detach() - start).abs().max()
    assert abs(float(moved_b / moved_a) - 3.0) < 1e-3  # Adam's first step moves each weight by lr


def test_held_out_scorer_matches_the_per_sequence_evaluation(teacher):
    from edgekit.distill.train import HeldOutScorer, held_out

    checkpoint = open_checkpoint(teacher)
    tensors = {n: checkpoint.tensors.get(n) for n in checkpoint.tensors}
    big = Decoder(checkpoint.spec, Weights(tensors, trainable=False), 64)
    noisy = {n: a + np.float32(0.05) * np.random.default_rng(1).normal(size=a.shape) for n, a in tensors.items()}
    small = Decoder(checkpoint.spec, Weights(noisy, trainable=False), 64)
    rng = np.random.default_rng(0)
    sequences = [list(rng.integers(0, 200, 24)) for _ in range(5)] + [list(rng.integers(0, 200, 16))]
    want, got = held_out(small, big, sequences), HeldOutScorer(big, sequences, chunk=2)(small)
    assert got["tokens"] == want["tokens"] == 5 * 23 + 15
    assert abs(got["perplexity"] / want["perplexity"] - 1) < 1e-5 and abs(got["kl"] - want["kl"]) < 1e-5
    assert want["kl"] > 1e-3
    scorer = HeldOutScorer(big, sequences)
    assert scorer.teacher_perplexity == pytest.approx(held_out(big, big, sequences)["perplexity"], rel=1e-5)


def test_learned_rounding_moves_codes_to_neighbouring_levels_only():
    from edgekit.distill.torch_model import QuantizedWeight
    from edgekit.quant.rtn import quantize_rtn

    qt = quantize_rtn(np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32), 4, 32)
    module = QuantizedWeight(qt, rounding=True)
    assert sorted(n for n, _ in module.named_parameters()) == ["log_gain", "offsets"]
    np.testing.assert_allclose(module().detach().numpy(), qt.dequantize(), rtol=1e-6)  # offsets start at 0
    module().pow(2).sum().backward()
    assert module.offsets.grad is not None and float(module.offsets.grad.abs().max()) > 0  # straight through
    with torch.no_grad():
        module.offsets.fill_(0.4)
        module.offsets[0, 0, :4] = torch.tensor([0.6, -0.6, 1.7, 30.0])
    codes = module.to_quantized().codes.astype(int)
    want = qt.codes.astype(int).copy()
    want[0, :4] += [1, -1, 2, 30]
    assert np.array_equal(codes, np.clip(want, 0, 15))  # ±0.4 rounds back; clipped to the 4-bit grid
    assert np.array_equal(module.to_quantized().zeros, qt.zeros)  # integer zero points untouched


def test_qad_with_learned_rounding_and_early_stopping_keeps_the_layout(tmp_path):
    from edgekit.distill.qad import quantization_aware_distill
    from edgekit.quant import quantize_checkpoint

    checkpoint = open_checkpoint(write_tiny_checkpoint(tmp_path / "llama", "llama"))
    rng = np.random.default_rng(0)
    sequences = [list(rng.integers(0, 200, 32)) for _ in range(20)]
    qm = quantize_checkpoint(checkpoint, Recipe(algorithm="rtn", group_size=32))
    before = {name: qt for name, qt in qm.quantized.items()}
    bits = qm.bits_per_weight
    config = TrainConfig(steps=12, batch_size=8, learning_rate=1e-2, warmup=1, temperature=1.0, eval_every=3)
    record = quantization_aware_distill(
        checkpoint, qm, sequences[:16], config, held_out=sequences[16:], rounding_lr=0.1
    )
    assert record["trained"].endswith("rounding") and record["codes_changed"] > 0
    assert [h["step"] for h in record["held_out_scores"]] == [0, 3, 6, 9, 12]
    best = min(h["perplexity"] for h in record["held_out_scores"])
    assert record["held_out_after"]["perplexity"] == pytest.approx(best, rel=1e-5)  # the best step's weights
    assert record["kept_step"] > 0 and record["held_out_after"]["perplexity"] < record["held_out_before"]["perplexity"]
    assert qm.bits_per_weight == bits
    for name, qt in qm.quantized.items():
        old = before[name]
        assert qt.codes.shape == old.codes.shape and qt.codes.dtype == old.codes.dtype
        assert np.array_equal(qt.zeros, old.zeros) and int(qt.codes.max()) < 2**qt.bits


def test_a_time_limit_shortens_the_cosine_schedule():
    from edgekit.distill.train import learning_rate

    plain = TrainConfig(steps=100, learning_rate=1.0, warmup=10)
    timed = TrainConfig(steps=100, learning_rate=1.0, warmup=10, time_limit=60.0)
    assert learning_rate(5, timed, 59.0) == learning_rate(5, plain) == 0.6  # warmup counts steps
    assert learning_rate(55, plain, 60.0) == pytest.approx(0.55)  # no limit: the clock is ignored
    assert learning_rate(55, timed, 15.0) == pytest.approx(0.55)  # the steps run out first
    assert learning_rate(55, timed, 60.0) == pytest.approx(0.1)  # the time runs out first
    assert learning_rate(20, timed, 30.0) == pytest.approx(0.55)


def test_export_qad_steps_keeps_the_best_held_out_weights(teacher, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    out = tmp_path / "artifact"
    result = CliRunner().invoke(cli, ["export", str(teacher), "-o", str(out), "--qad-steps", "4", "-a", "rtn"])
    assert result.exit_code == 0, result.output
    qad = json.loads((out / "edgekit.json").read_text())["quantization"]["recipe"]["qad"]
    assert qad["training"]["eval_every"] == 1 and [h["step"] for h in qad["held_out_scores"]] == [0, 1, 2, 3, 4]
    best = min(h["perplexity"] for h in qad["held_out_scores"])
    assert qad["held_out_after"]["perplexity"] == pytest.approx(best, rel=1e-5)
    assert edgekit.load(out, profile=None).generate("hi", max_new_tokens=3, ignore_eos=True).stats.generated_tokens == 3
    # its own text, each window seen once: 4 steps x 4 sequences of 128 tokens sampled from the model,
    # and 2 more held out; from a calibration file shorter than that, what it holds
    assert (qad["sequences"], qad["sequence_length"], qad["held_out_before"]["tokens"]) == (16, 128, 2 * 127)
    text = tmp_path / "short.txt"
    text.write_text("A short text for calibration, written out a few times over. " * 30)
    out = tmp_path / "from-file"
    result = CliRunner().invoke(
        cli, ["export", str(teacher), "-o", str(out), "--qad-steps", "4", "-a", "rtn", "--calibration", str(text)]
    )
    assert result.exit_code == 0, result.output
    assert "QAD text: 18 windows of 128 tokens from" in result.output
    qad = json.loads((out / "edgekit.json").read_text())["quantization"]["recipe"]["qad"]
    assert qad["sequence_length"] == 128 and qad["sequences"] < 16


def test_distill_draft_makes_a_draft_artifact_with_the_targets_recipe(teacher, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    target, draft = tmp_path / "target", tmp_path / "draft"
    recipe = Recipe(algorithm="rtn", group_size=32, symmetric=True)
    edgekit.export(teacher, target, recipe=recipe, max_context=256)
    args = ["distill", str(teacher), "--draft", str(target), "-o", str(draft), "--steps", "3", "--samples", "8"]
    result = CliRunner().invoke(cli, [*args, "--held-out", "2", "--seq-len", "32"])
    assert result.exit_code == 0, result.output
    made, wanted = (json.loads((p / "edgekit.json").read_text()) for p in (draft, target))
    assert made["spec"]["num_layers"] == 1 < wanted["spec"]["num_layers"]  # an eighth of 4, at least one
    assert made["quantization"]["recipe"] == wanted["quantization"]["recipe"]
    assert (made["format"], made["flavor"], made["max_context"]) == (wanted["format"], wanted["flavor"], 256)
    assert not (tmp_path / ".draft.student").exists()
    prompt = ["-p", "a b a b", "-n", "8", "--ignore-eos"]
    run = CliRunner().invoke(cli, ["run", str(target), "--draft", str(draft), *prompt])
    assert run.exit_code == 0, run.output
    assert "draft:" in run.output
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.parametrize("family", ["llama", "gemma"])  # an unrotated stream, and a rotated tied model's
def test_layer_tuning_lowers_each_layers_error_and_keeps_the_codes(family, tmp_path):
    """Scales move, codes and zero points do not: layer 0 (whose inputs tuning cannot change) keeps
    GPTQ's codes exactly, and every layer reproduces its float layer better than GPTQ left it."""
    from edgekit.distill.layer_tune import LayerTuner
    from edgekit.quant import quantize_checkpoint

    checkpoint = open_checkpoint(write_tiny_checkpoint(tmp_path / family, family))
    rng = np.random.default_rng(0)
    calibration = [list(rng.integers(3, 200, 48)) for _ in range(8)]
    recipe = Recipe(algorithm="gptq", group_size=32, rotate_residual=family == "gemma")
    plain = quantize_checkpoint(checkpoint, recipe, calibration)
    tuner = LayerTuner(checkpoint.spec, steps=20, learning_rate=2e-2)
    tuned = quantize_checkpoint(checkpoint, recipe, calibration, tune_layer=tuner)
    record = tuner.record()
    assert [layer["layer"] for layer in record["layers"]] == list(range(checkpoint.spec.num_layers))
    assert all(layer["error_after"] < layer["error_before"] for layer in record["layers"])
    assert tuned.bits_per_weight == plain.bits_per_weight
    for name, qt in tuned.quantized.items():
        old = plain.quantized[name]
        assert qt.codes.shape == old.codes.shape and (qt.zeros is None) == (old.zeros is None)
        if name.startswith("model.layers.0."):
            assert np.array_equal(qt.codes, old.codes) and np.array_equal(qt.zeros, old.zeros)
            assert not np.array_equal(qt.scales, old.scales)
            assert np.array_equal(qt.scales, qt.scales.astype(np.float16).astype(np.float32))


def test_export_layer_tune_steps_records_and_verifies(teacher, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    out = tmp_path / "tuned"
    args = ["export", str(teacher), "-o", str(out), "-a", "gptq", "--group-size", "32", "--layer-tune-steps", "3"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "tuning each layer's scales: 3 steps" in result.output
    manifest = json.loads((out / "edgekit.json").read_text())
    record = manifest["quantization"]["recipe"]["layer_tune"]
    assert record["steps"] == 3 and len(record["layers"]) == 4
    assert manifest["verify"]["checked"] and manifest["verify"]["top1_agreement"] == 1.0


def test_layer_tuning_refuses_what_it_cannot_tune(teacher, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    out = tmp_path / "tuned"
    for extra, message in [
        (["-a", "rtn", "--layer-tune-steps", "3"], "which the rtn algorithm does not read"),
        (["--layer-tune-steps", "0"], "0 is not in the range x>=1"),
        (["--via", "optimum", "--layer-tune-steps", "3"], "does not cover an export through optimum"),
        (["--via", "optimum", "--qad-steps", "3"], "does not cover an export through optimum"),
    ]:
        result = CliRunner().invoke(cli, ["export", str(teacher), "-o", str(out), *extra])
        assert result.exit_code == 2, result.output
        assert message in result.output and "quantizing" not in result.output and not out.exists()
    with pytest.raises(EdgekitError, match="at least 1"):
        edgekit.export(teacher, out, layer_tune_steps=0)
    with pytest.raises(EdgekitError, match="at least 1"):  # checked before the path is chosen
        edgekit.export(teacher, out, via="optimum", layer_tune_steps=0)
