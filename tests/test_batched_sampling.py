"""The reference's batched decode step and the self-generated calibration text built on it."""

import numpy as np
import pytest
from helpers import ALL_FAMILIES

from edgekit.generation.tokenizer import TextTokenizer
from edgekit.quant.calibration import SEEDS, self_generated
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
    sequences = self_generated(model, TextTokenizer(checkpoint.tokenizer), samples=5, length=24, top_k=1)
    assert len(sequences) == 5 and all(len(s) == 24 for s in sequences)
    tokenizer = TextTokenizer(checkpoint.tokenizer)
    for i, ids in enumerate(sequences):  # top_k=1 is greedy: each is the greedy continuation of its seed
        seed = tokenizer.encode(SEEDS[i % len(SEEDS)])
        assert ids[: len(seed)] == seed
        assert ids[len(seed) :] == model.greedy(seed, 24 - len(seed))
    assert sequences == self_generated(model, TextTokenizer(checkpoint.tokenizer), samples=5, length=24, top_k=1)
