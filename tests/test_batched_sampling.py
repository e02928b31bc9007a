"""The reference's batched decode step and the self-generated calibration text built on it."""

import json
from dataclasses import replace

import numpy as np
import pytest
from helpers import ALL_FAMILIES

from edgekit.generation.tokenizer import TextTokenizer
from edgekit.quant.calibration import CHAT_SEEDS, SEEDS, document_start, seed_prompts, self_generated
from edgekit.reference import ReferenceModel
from edgekit.sources import open_checkpoint


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_decode_batch_matches_one_sequence_at_a_time(tiny_models, family):
    model = ReferenceModel.from_checkpoint(open_checkpoint(tiny_models[family]))
    prompts = [[5, 9, 13], [7], [2, 4, 6, 8, 10]]  # different lengths: each sequence at its own position
    alone = [model.new_cache() for _ in prompts]
    together = [model.new_cache() for _ in prompts]
    for ids, a, b in zip(prompts, alone, together, strict=True):
        model.forward(ids, a)
        model.forward(ids, b)
    for step in range(4):
        tokens = [11 + step, 3 + step, 20 + step]
        batched = model.decode_batch(tokens, together)
        for row, (token, cache) in enumerate(zip(tokens, alone, strict=True)):
            expected = model.forward([token], cache, all_logits=False)[-1]
            np.testing.assert_allclose(batched[row], expected, rtol=1e-4, atol=1e-4)
    assert [c.length for c in together] == [c.length for c in alone] == [7, 5, 9]


def test_self_generated_sequences_follow_the_model(tiny_models):
    checkpoint = open_checkpoint(tiny_models["llama"])
    model = ReferenceModel.from_checkpoint(checkpoint)
    sequences = self_generated(model, TextTokenizer(checkpoint.tokenizer), samples=5, length=80, top_k=1)
    assert len(sequences) == 5 and all(len(s) == 80 for s in sequences)
    tokenizer = TextTokenizer(checkpoint.tokenizer)
    assert tokenizer.chat_template is not None  # a chat model: every other seed is a user turn
    seeds = seed_prompts(tokenizer, 5)
    assert seeds[0] == seeds[2] == [tokenizer.special_id("<|endoftext|>")]  # unconditional samples
    assert seeds[1] == tokenizer.apply_chat_template([{"role": "user", "content": CHAT_SEEDS[0]}])
    for seed, ids in zip(seeds, sequences, strict=True):  # top_k=1 is greedy: each continues its seed
        assert ids[: len(seed)] == seed
        assert len(seed) < 80 and ids[len(seed) :] == model.greedy(seed, 80 - len(seed))
    assert sequences == self_generated(model, TextTokenizer(checkpoint.tokenizer), samples=5, length=80, top_k=1)
    assert all(len(s) == 8 for s in self_generated(model, tokenizer, samples=2, length=8, top_k=1))  # seeds cut


def test_calibration_starts_where_documents_start(tiny_models):
    """The BOS a tokenizer adds, else GPT-2-style vocabularies' separator, else the text openings."""
    files = open_checkpoint(tiny_models["llama"]).tokenizer
    separator = TextTokenizer(files).special_id("<|endoftext|>")
    assert document_start(TextTokenizer(files)) == [separator]
    spec = json.loads(files.tokenizer_json)
    start = next(t for t in spec["added_tokens"] if t["content"] == "<|im_start|>")
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [start["id"]], "tokens": ["<|im_start|>"]}},
    }
    with_bos = TextTokenizer(replace(files, tokenizer_json=json.dumps(spec)))
    assert document_start(with_bos) == [start["id"]] == seed_prompts(with_bos, 3)[2][:1]
    spec.pop("post_processor")
    for token in spec["added_tokens"]:
        token["special"] = token["content"] != "<|endoftext|>"
    plain = TextTokenizer(replace(files, tokenizer_json=json.dumps(spec), chat_template=None))
    assert document_start(plain) is None
    assert seed_prompts(plain, 3) == [plain.encode(SEEDS[i]) for i in range(3)]


@pytest.mark.parametrize("family", [*ALL_FAMILIES, "llama-gguf-q8"])
def test_streamed_sampling_matches_the_in_memory_model(tiny_models, tmp_path, monkeypatch, family):
    """Past IN_MEMORY_LIMIT the source is read one layer at a time on every step: same logits, same
    text; from safetensors, and from a quantized GGUF whose rows are dequantized per block."""
    from edgekit.quant import calibration
    from edgekit.testing.gguf_writer import write_gguf

    if family == "llama-gguf-q8":
        source = write_gguf(open_checkpoint(tiny_models["llama"]), tmp_path / "m.gguf", "Q8_0")
    else:
        source = tiny_models[family]
    checkpoint = open_checkpoint(source)
    model = ReferenceModel.from_checkpoint(checkpoint)
    streamed = calibration.StreamedReference(checkpoint)
    prompts = [[5, 9, 13], [7]]
    caches = [model.new_cache() for _ in prompts]
    streamed_caches = [streamed.new_cache() for _ in prompts]
    for ids, a, b in zip(prompts, caches, streamed_caches, strict=True):
        np.testing.assert_allclose(
            streamed.forward(ids, b, all_logits=False), model.forward(ids, a, all_logits=False), rtol=1e-5, atol=1e-5
        )
    for step in range(3):
        tokens = [11 + step, 3 + step]
        np.testing.assert_allclose(
            streamed.decode_batch(tokens, streamed_caches), model.decode_batch(tokens, caches), rtol=1e-5, atol=1e-5
        )
    assert [c.length for c in streamed_caches] == [c.length for c in caches] == [6, 4]

    in_memory = calibration.calibration_sequences(checkpoint, 20, 3)
    monkeypatch.setattr(calibration, "IN_MEMORY_LIMIT", 0)
    monkeypatch.setattr(ReferenceModel, "from_checkpoint", lambda *a: pytest.fail("loaded whole over the limit"))
    assert calibration.calibration_sequences(checkpoint, 20, 3) == in_memory
