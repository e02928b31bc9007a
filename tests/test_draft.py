"""Speculative decoding with a draft model: greedy answers are the same tokens with and without
it on every family, sampling keeps the target's distribution (the rejection rule with the draft's
own distribution), the draft keeps its cache in step across calls, and a draft with another
tokenizer or vocabulary is one clear line (library, CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import ALL_FAMILIES
from test_speculative import FAST, GREEDY, chi_square_critical, copy_prompt

import edgekit
from edgekit.cli import cli
from edgekit.distill.student import plan_student, student_config, student_weights
from edgekit.errors import EdgekitError
from edgekit.exporters.pipeline import export
from edgekit.generation import speculative
from edgekit.sources import open_checkpoint
from edgekit.sources.hf_writer import as_stored
from edgekit.spec import spec_from_config
from edgekit.testing import write_tiny_checkpoint
from edgekit.testing.tiny import write_checkpoint


@pytest.fixture(autouse=True)
def draft_never_pauses(monkeypatch):
    """These tests check what verify passes produce, so every step is one: the untrained drafts
    here would otherwise be paused (or given up) by the pacing, which test_speculative checks."""
    never = speculative.Pacing(
        judge_after=10**9, pause_first=0, growth=1, probe=4, timed=False, give_up=False, adaptive=True
    )
    monkeypatch.setattr(speculative.DraftModel, "pacing", never)


def first_layer_of(target: Path, folder: Path) -> Path:
    """The target cut to its first layer (what `edgekit distill --draft` starts from, untrained):
    a draft that agrees with the target often, not always."""
    checkpoint = open_checkpoint(target)
    plan = plan_student(checkpoint.spec, layers=1)
    config = student_config(checkpoint.config, plan)
    tensors = {name: checkpoint.tensors.get(name) for name in checkpoint.tensors}
    weights = as_stored(spec_from_config(config), student_weights(checkpoint.spec, tensors, plan))
    return write_checkpoint(folder, config, weights)


def onnx_pair(target: Path, folder: Path) -> tuple[Path, Path]:
    export(target, folder / "target", recipe=FAST, max_context=256)
    export(first_layer_of(target, folder / "draft-source"), folder / "draft", recipe=FAST, max_context=256)
    return folder / "target", folder / "draft"


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_greedy_tokens_identical_with_a_draft_on_onnx_cpu(tiny_models, family, tmp_path):
    target, draft = onnx_pair(tiny_models[family], tmp_path)
    engine = edgekit.load(target, profile=None, draft=draft)
    assert engine.defaults.speculation == "draft"
    prompt = copy_prompt(engine)
    plain = engine.generate(prompt, speculation="off", **GREEDY)
    fast = engine.generate(prompt, **GREEDY)
    assert fast.token_ids == plain.token_ids
    assert fast.stats.speculation == "draft" and 0 < fast.stats.accepted_tokens <= fast.stats.proposed_tokens
    assert fast.stats.decode_steps < plain.stats.decode_steps


def test_greedy_tokens_identical_with_a_draft_on_mlx_cpu(tiny_models, tmp_path):
    pytest.importorskip("mlx.core")
    export(tiny_models["qwen2"], tmp_path / "target", format="mlx", recipe=FAST, max_context=256)
    source = first_layer_of(tiny_models["qwen2"], tmp_path / "draft-source")
    export(source, tmp_path / "draft", format="mlx", recipe=FAST, max_context=256)
    engine = edgekit.load(tmp_path / "target", profile=None, draft=tmp_path / "draft")
    prompt = copy_prompt(engine)
    plain = engine.generate(prompt, speculation="off", **GREEDY)
    fast = engine.generate(prompt, **GREEDY)
    assert fast.token_ids == plain.token_ids and fast.stats.accepted_tokens > 0


def test_sampling_with_a_draft_keeps_the_target_distribution(tiny_models, tmp_path):
    """Temperature 0.9, top-k 4: the first three tokens of many seeded answers (the second and
    third come from verify passes over the draft's proposals) are distributed as without it."""
    target, draft = onnx_pair(tiny_models["llama"], tmp_path)
    engine = edgekit.load(target, profile=None, draft=draft)
    prompt = copy_prompt(engine)
    options = {"max_new_tokens": 3, "ignore_eos": True, "temperature": 0.9, "top_k": 4}
    runs = 1500
    counts = {mode: [{}, {}] for mode in ("off", "draft")}
    proposed = accepted = 0
    for mode in counts:
        for seed in range(runs):
            done = engine.generate(prompt, seed=seed, speculation=mode, **options)
            for position in (1, 2):
                cell = tuple(done.token_ids[: position + 1])
                counts[mode][position - 1][cell] = counts[mode][position - 1].get(cell, 0) + 1
            proposed += done.stats.proposed_tokens
            accepted += done.stats.accepted_tokens
    assert 0 < accepted < proposed  # both ways out of the rule were taken
    for position in (0, 1):
        plain, fast = counts["off"][position], counts["draft"][position]
        cells = [c for c in set(plain) | set(fast) if plain.get(c, 0) + fast.get(c, 0) >= 5]
        stat = sum((plain.get(c, 0) - fast.get(c, 0)) ** 2 / (plain.get(c, 0) + fast.get(c, 0)) for c in cells)
        assert stat < chi_square_critical(len(cells) - 1), (position, stat, len(cells))


def test_the_draft_cache_follows_the_conversation(tiny_models, tmp_path):
    target, draft = onnx_pair(tiny_models["llama"], tmp_path)
    engine = edgekit.load(target, profile=None, draft=draft)
    prompt = copy_prompt(engine)
    first = engine.generate(prompt, **GREEDY)
    follow = [*prompt, *first.token_ids, 11, 12]
    again = engine.generate(follow, **GREEDY)
    assert engine.draft.runtime.length <= len(follow) + len(again.token_ids)
    engine.reset()
    assert engine.draft.runtime.length == 0 and engine.draft.cached == []
    assert engine.generate(follow, speculation="off", **GREEDY).token_ids == again.token_ids


def test_a_draft_with_another_vocabulary_or_tokenizer_is_one_clear_line(tiny_models, tmp_path):
    target = tiny_models["llama"]
    other_vocab = write_tiny_checkpoint(tmp_path / "vocab", "llama", vocab_size=320, num_hidden_layers=1)
    with pytest.raises(EdgekitError, match=r"its vocabulary has 320 tokens, the target's 384; a draft shares"):
        edgekit.load(target, profile=None, draft=other_vocab)
    other = first_layer_of(target, tmp_path / "tokenizer")
    data = json.loads((other / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[-2:]  # two ordinary tokens trade ids
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(EdgekitError, match=r"another tokenizer \(\d+ token/id pairs differ"):
        edgekit.load(target, profile=None, draft=other)
    result = CliRunner().invoke(cli, ["run", str(target), "-p", "hi", "--profile", "none", "--draft", str(other)])
    assert result.exit_code == 2 and "another tokenizer" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_draft_mode_without_a_draft_is_one_clear_line(tiny_artifact):
    engine = edgekit.load(tiny_artifact, profile=None)
    with pytest.raises(EdgekitError, match=r"speculation='draft' needs a draft model"):
        engine.generate("hello", speculation="draft")


def test_the_profile_names_the_draft(tiny_models, tmp_path):
    target, draft = onnx_pair(tiny_models["llama"], tmp_path)
    profile = tmp_path / "with-draft.toml"
    profile.write_text(
        'name = "with-draft"\ndescription = "a draft next to the profile"\n'
        f'[runtime]\nthreads = 1\ndraft = "{draft.name}"\n'
    )
    engine = edgekit.load(target, profile=profile)
    assert engine.draft is not None and engine.defaults.speculation == "draft"
    result = CliRunner().invoke(
        cli, ["run", str(target), "-p", "a b c a b c a b", "-n", "12", "--ignore-eos", "--profile", str(profile)]
    )
    assert result.exit_code == 0, result.output
    assert "draft:" in result.output and "proposed tokens accepted" in result.output


def test_draft_and_target_logits_differ(tiny_models, tmp_path):
    """The draft really is another model (so the tests above exercise rejections)."""
    target, draft = onnx_pair(tiny_models["llama"], tmp_path)
    a = edgekit.load(target, profile=None).runtime.prefill(list(range(5, 25)))
    b = edgekit.load(draft, profile=None).runtime.prefill(list(range(5, 25)))
    assert not np.allclose(a, b, atol=1e-2)
