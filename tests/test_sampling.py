"""Sampling against a plain-numpy oracle written from the definitions, on fixed logits."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from edgekit.generation.sampling import Sampler, SamplingParams, candidates, penalize_repeats

LOGITS = np.random.default_rng(7).normal(0, 2.5, 2000).astype(np.float32)


def oracle(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> dict[int, float]:
    """token -> probability, filter by filter over a token list sorted by probability."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    tokens = sorted(range(len(p)), key=lambda t: -p[t])
    if top_k:
        tokens = tokens[:top_k]
    if top_p < 1.0:
        mass = sum(p[t] for t in tokens)
        kept, total = [], 0.0
        for t in tokens:  # keep adding until the kept mass reaches top_p of what is left
            kept.append(t)
            total += p[t] / mass
            if total >= top_p:
                break
        tokens = kept
    if min_p > 0.0:
        tokens = [t for t in tokens if p[t] >= min_p * p[tokens[0]]]
    total = sum(p[t] for t in tokens)
    return {t: p[t] / total for t in tokens}


@pytest.mark.parametrize(
    "kw",
    [
        {"temperature": 1.0},
        {"temperature": 0.7, "top_k": 10},
        {"temperature": 1.3, "top_p": 0.8},
        {"temperature": 1.0, "min_p": 0.05},
        {"temperature": 0.9, "top_k": 40, "top_p": 0.9, "min_p": 0.02},
        {"temperature": 2.0, "top_p": 0.5, "min_p": 0.3},
        {"temperature": 1.0, "top_k": 1},
        {"temperature": 1.0, "top_p": 0.999},  # a head larger than the first guess
    ],
)
def test_candidates_match_the_oracle(kw):
    ids, probs = candidates(LOGITS, SamplingParams(**kw))
    expected = oracle(LOGITS, **kw)
    assert set(ids.tolist()) == set(expected)
    got = dict(zip(ids.tolist(), probs.tolist(), strict=True))
    assert all(abs(got[t] - expected[t]) < 1e-6 for t in expected)  # float32 math


def test_draws_follow_the_distribution():
    params = SamplingParams(temperature=1.0, top_k=5, seed=0)
    expected = oracle(LOGITS, top_k=5)
    sampler = Sampler(params)
    draws = np.array([sampler(LOGITS) for _ in range(20000)])
    for token, p in expected.items():
        assert abs(np.mean(draws == token) - p) < 0.015
    assert set(np.unique(draws)) <= set(expected)


def test_same_seed_same_tokens_other_seed_other_tokens():
    def draw(seed):
        sampler = Sampler(SamplingParams(temperature=1.0, seed=seed))
        return [sampler(LOGITS) for _ in range(50)]

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


def test_greedy_is_argmax_and_ignores_the_seed():
    assert Sampler(SamplingParams(seed=5))(LOGITS) == int(np.argmax(LOGITS))


def test_repetition_penalty_as_transformers_defines_it():
    logits = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    out = penalize_repeats(logits, [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]
    assert penalize_repeats(logits, [0], 1.0) is logits
    # a penalty strong enough flips the greedy choice away from the repeated token
    assert Sampler(SamplingParams(repetition_penalty=3.0))(logits, [0]) == 2


@pytest.mark.parametrize(
    "kw,name", [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"min_p": 1.0}, "min_p")]
)
def test_bad_parameters_are_named(kw, name):
    with pytest.raises(EdgekitError, match=name):
        SamplingParams(**kw)


def test_presence_and_frequency_penalties_follow_openai():
    """logit -= count * frequency + presence, over the tokens this sampler has chosen."""
    logits = np.array([3.0, 2.9, 0.0, -1.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(presence_penalty=0.05, frequency_penalty=0.1))
    assert [sampler(logits) for _ in range(3)] == [0, 1, 0]  # 3.0-0.15 < 2.9; then 2.9-0.15 < 2.85
    assert sampler.generated == {0: 2, 1: 1}
    plain = Sampler(SamplingParams())
    assert [plain(logits) for _ in range(3)] == [0, 0, 0]
    with pytest.raises(EdgekitError, match="presence_penalty"):
        SamplingParams(presence_penalty=2.5)
