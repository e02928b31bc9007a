"""Several sequences at once: the batch runtime's logits against one sequence at a time (every
family), the parallel engine's answers against the plain engine's, the prefix cache across
requests, and the KV budget."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from helpers import ALL_FAMILIES, rel_err, start_seated

import edgekit
from edgekit.errors import EdgekitError
from edgekit.generation.prefix_cache import PrefixCache
from edgekit.runtimes.base import prefill_slot
from edgekit.runtimes.onnx import OnnxRuntime
from edgekit.runtimes.onnx_batch import OnnxBatchRuntime

# float32 compute (accuracy level 0) throughout; the batched run sums the same products in another
# order at most. With int8 compute such a difference can move an activation across a rounding
# boundary: one sequence's logits then differ by 1-2% (seen on the tiny llama with channels reordered)
TOLERANCE = 1e-5
CONTEXT = 128


@pytest.fixture(scope="module")
def artifacts(tiny_models, tmp_path_factory):
    from edgekit.quant.recipe import Recipe

    root = tmp_path_factory.mktemp("batching")
    out = {}
    for family in ALL_FAMILIES:
        out[family] = root / family
        edgekit.export(
            tiny_models[family], out[family], recipe=Recipe(algorithm="rtn"), max_context=CONTEXT, accuracy_level=0
        )
    return out


def _one_at_a_time(runtime, prompt: list[int], tokens: list[int]) -> np.ndarray:
    runtime.reset()
    logits = [runtime.prefill(prompt)]
    logits += [runtime.decode(t) for t in tokens]
    return np.stack(logits)


def _batched(batch, slots: list[int], prompts: list[list[int]], tokens: list[list[int]]) -> list[np.ndarray]:
    """Each prompt prefilled in its slot, then its tokens decoded with the others' in one step each."""
    got = [[prefill_slot(batch, s, p)] for s, p in zip(slots, prompts, strict=True)]
    for step in range(len(tokens[0])):
        out = batch.decode({s: t[step] for s, t in zip(slots, tokens, strict=True)})
        for row, s in zip(got, slots, strict=True):
            row.append(out[s])
    return [np.stack(row) for row in got]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_a_batched_step_gives_each_sequence_its_own_logits(family, artifacts):
    from edgekit.artifact import MODEL_FILE, read_manifest

    spec = read_manifest(artifacts[family]).spec
    path = artifacts[family] / MODEL_FILE
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, spec.vocab_size, n).tolist() for n in (5, 19, 11)]  # different lengths
    tokens = [rng.integers(3, spec.vocab_size, 6).tolist() for _ in prompts]
    single = OnnxRuntime(path, spec, CONTEXT)
    expected = [_one_at_a_time(single, p, t) for p, t in zip(prompts, tokens, strict=True)]

    batch = OnnxBatchRuntime(path, spec, CONTEXT, slots=4, prefill_chunk=4)
    slots = [0, 2, 3]  # slot 1 is a hole: it rides along with a dummy token
    prefill_slot(batch, 1, [7, 8, 9])
    for row, want in zip(_batched(batch, slots, prompts, tokens), expected, strict=True):
        assert rel_err(row, want) < TOLERANCE
    assert batch.lengths == [5 + 6, 3, 19 + 6, 11 + 6]  # the hole kept its length


@pytest.fixture(scope="module")
def parallel(artifacts):
    engine = edgekit.load(artifacts["llama"], profile=None, parallel=3, prefix_cache_mb=4)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def plain(artifacts):
    return edgekit.load(artifacts["llama"], profile=None)


PROMPTS = [
    "The quick brown fox",
    "Paris is the capital of",
    "def add(a, b):",
    "Numbers like 12345",
    "Café crème",
    "Berlin is the capital of Germany. Berlin is the capital of",
]
SETTINGS = [
    {"max_new_tokens": 20, "ignore_eos": True},
    {"max_new_tokens": 16, "temperature": 0.9, "top_k": 20, "seed": 7, "ignore_eos": True},
    {"max_new_tokens": 24, "stop": ["e"]},
    {"max_new_tokens": 12, "temperature": 1.2, "top_p": 0.8, "seed": 3, "repetition_penalty": 1.3},
    {"max_new_tokens": 8, "regex": "[0-9]{3}-[a-z]{2}"},
    {"max_new_tokens": 16, "speculation": "lookup", "ignore_eos": True},  # speculates only once it runs alone
]


def test_concurrent_requests_answer_as_one_at_a_time(parallel, plain, monkeypatch):
    """6 requests with their own settings on 3 slots: each answer equals the plain engine's."""
    expected = [plain.generate(p, **s) for p, s in zip(PROMPTS, SETTINGS, strict=True)]
    answers: list = [None] * len(PROMPTS)
    steps_before = parallel.batcher.sequence_steps, parallel.batcher.steps

    def ask(i: int) -> None:
        answers[i] = parallel.generate(PROMPTS[i], **SETTINGS[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    start_seated(parallel.batcher, threads, 3, monkeypatch)
    for t in threads:
        t.join(60)
    for got, want in zip(answers, expected, strict=True):
        assert (got.text, got.finish_reason) == (want.text, want.finish_reason)
    sequence_steps = parallel.batcher.sequence_steps - steps_before[0]
    runs = parallel.batcher.steps - steps_before[1]
    assert sequence_steps > runs  # some runs stepped several sequences
    assert answers[4].text[3] == "-"  # the constraint held inside the batch
    assert answers[5].stats.speculation == "lookup"


def test_lookup_verifies_through_the_batcher_alone_and_decodes_plainly_while_others_run(parallel, plain):
    prompt, settings = PROMPTS[5], SETTINGS[5]
    alone = parallel.generate(prompt, **settings)
    assert alone.stats.proposed_tokens > 0 and alone.text == plain.generate(prompt, **settings).text
    assert alone.stats.decode_steps < len(alone.token_ids) - 1  # verify passes gave several tokens
    with parallel.batcher.sequence():  # another sequence in flight: a verify pass would make it wait
        shared = parallel.generate(prompt, **settings)
    assert shared.stats.proposed_tokens == 0 and shared.text == alone.text


def test_a_stream_closed_mid_answer_frees_its_slot(parallel, plain):
    stream = parallel.stream("The quick brown fox", max_new_tokens=100, ignore_eos=True)
    next(stream)
    next(stream)
    stream.close()
    assert sorted(parallel._free) == [0, 1, 2]
    again = parallel.generate("The quick brown fox", max_new_tokens=10, ignore_eos=True)
    assert again.text == plain.generate("The quick brown fox", max_new_tokens=10, ignore_eos=True).text


def test_the_prefix_cache_serves_another_conversations_prefix(parallel, plain):
    system = "You are a helpful assistant. " * 3
    first = parallel.generate(system + "Tell me about Paris.", max_new_tokens=4)
    # another slot's request: its own slot holds nothing of it, the shared cache does
    answers = {}

    def hold() -> None:  # keeps the first slot busy so the next request lands elsewhere
        answers["hold"] = parallel.generate("Numbers like 12345", max_new_tokens=30, ignore_eos=True)

    holder = threading.Thread(target=hold)
    holder.start()
    while 0 in parallel._free:  # the holder has the slot the first request used
        time.sleep(0.001)
    second = parallel.generate(system + "And Berlin?", max_new_tokens=6)
    holder.join(30)
    assert first.stats.cached_prompt_tokens == 0 or first.stats.cached_prompt_tokens < 32
    block = parallel.prefix_cache.block
    ids = plain.prompt_ids(system)
    assert second.stats.cached_prompt_tokens >= (len(ids) - 2) // block * block > 0
    assert second.usage["prompt_tokens_details"]["cached_tokens"] == second.stats.cached_prompt_tokens
    assert second.text == plain.generate(system + "And Berlin?", max_new_tokens=6).text


def _restored_equals_recomputed(batch, vocab: int) -> None:
    """A prompt after a restored prefix: logits equal to running the whole prompt."""
    ids = np.random.default_rng(2).integers(3, vocab, 70).tolist()
    whole = prefill_slot(batch, 0, ids)
    cache = PrefixCache(budget_bytes=1 << 30, block=32)
    assert cache.store(ids, lambda a, b: batch.read_kv(0, a, b)) == 2
    blocks = cache.match(ids[:-1])
    assert len(blocks) == 2
    for n, block in enumerate(blocks):
        batch.write_kv(1, n * 32, block.kv)
    assert batch.lengths[1] == 64
    assert rel_err(prefill_slot(batch, 1, ids[64:]), whole) < TOLERANCE


def test_restored_keys_and_values_give_the_same_logits(artifacts):
    from edgekit.artifact import MODEL_FILE, read_manifest

    spec = read_manifest(artifacts["qwen3"]).spec
    _restored_equals_recomputed(
        OnnxBatchRuntime(artifacts["qwen3"] / MODEL_FILE, spec, CONTEXT, slots=2), spec.vocab_size
    )


def _fake_kv(start: int, end: int) -> np.ndarray:
    return np.full((2, 2, 1, end - start, 4), start, dtype=np.float32)  # 64 bytes per position


def test_prefix_cache_hit_miss_budget_and_eviction():
    block_bytes = 8 * 64
    cache = PrefixCache(budget_bytes=5 * block_bytes, block=8)
    a = list(range(100, 124))  # 3 blocks
    b = a[:16] + list(range(200, 216))  # shares 2 blocks with a, then 2 of its own
    assert cache.match(a) == []  # miss
    assert cache.store(a, _fake_kv) == 3
    assert [blk.kv[0, 0, 0, 0, 0] for blk in cache.match(a + [1, 2])] == [0, 8, 16]  # hit, in order
    assert len(cache.match(a[:15])) == 1  # only whole blocks
    assert len(cache.match([9] + a)) == 0  # a prefix, not a substring
    assert cache.store(b, _fake_kv) == 2  # the shared blocks are kept once
    assert cache.bytes == 5 * block_bytes and len(cache) == 5
    cache.match(b)  # b is now the most recent: a's own third block is the oldest
    c = list(range(300, 308))
    assert cache.store(c, _fake_kv) == 1
    assert cache.bytes <= cache.budget_bytes and len(cache.match(a)) == 2  # a lost its tail, not its head
    assert len(cache.match(b)) == 4 and len(cache.match(c)) == 1
    tiny = PrefixCache(budget_bytes=block_bytes, block=8)
    assert tiny.store(a, _fake_kv) == 1 and len(tiny.match(a)) == 1  # a chain longer than the budget keeps its head


def test_kv_budget_cuts_each_slots_context_or_refuses(artifacts):
    from edgekit.runtimes.base import kv_bytes_per_token

    engine = edgekit.load(artifacts["llama"], profile=None, parallel=2, kv_cache_mb=1)
    per_token = kv_bytes_per_token(engine.spec, 4)
    assert engine.max_context == min(CONTEXT, (1 << 20) // (2 * per_token))
    engine.close()
    with pytest.raises(EdgekitError, match="need .* MB of KV cache but the budget is 1 MB; serve fewer"):
        edgekit.load(artifacts["llama"], profile=None, parallel=64, kv_cache_mb=1)


@pytest.fixture(scope="module")
def mlx_artifacts(tiny_models, tmp_path_factory):
    pytest.importorskip("mlx.core")
    from edgekit.quant.recipe import Recipe

    root = tmp_path_factory.mktemp("batching-mlx")
    out = {}
    for family in ALL_FAMILIES:
        out[family] = root / family
        edgekit.export(
            tiny_models[family], out[family], format="mlx", recipe=Recipe(algorithm="rtn"), max_context=CONTEXT
        )
    return out


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_mlx_batched_step_gives_each_sequence_its_own_logits(family, mlx_artifacts):
    from edgekit.runtimes.mlx import MlxRuntime
    from edgekit.runtimes.mlx_batch import MlxBatchRuntime

    single = MlxRuntime(mlx_artifacts[family], CONTEXT)
    rng = np.random.default_rng(1)
    vocab = single.spec.vocab_size
    prompts = [rng.integers(3, vocab, n).tolist() for n in (5, 19, 11)]
    tokens = [rng.integers(3, vocab, 6).tolist() for _ in prompts]
    expected = [_one_at_a_time(single, p, t) for p, t in zip(prompts, tokens, strict=True)]

    batch = MlxBatchRuntime(mlx_artifacts[family], CONTEXT, slots=4, prefill_chunk=4)
    batch.prepare()  # in this thread, which runs it
    for row, want in zip(_batched(batch, [3, 0, 2], prompts, tokens), expected, strict=True):
        assert rel_err(row, want) < TOLERANCE
    assert batch.lengths == [19 + 6, 0, 11 + 6, 5 + 6]


def test_mlx_parallel_engine_answers_as_one_at_a_time(mlx_artifacts, monkeypatch):
    plain = edgekit.load(mlx_artifacts["qwen2"], profile=None)
    expected = [plain.generate(p, **s) for p, s in zip(PROMPTS[:3], SETTINGS[:3], strict=True)]
    engine = edgekit.load(mlx_artifacts["qwen2"], profile=None, parallel=2, prefix_cache_mb=4)
    answers: list = [None] * 3
    system = "You are a helpful assistant. " * 3  # the prefix cache keeps and restores MLX keys and values
    first = engine.generate(system + "Hi", max_new_tokens=4)
    again = engine.generate(system + "Hello", max_new_tokens=4)
    assert again.stats.cached_prompt_tokens >= 32 > first.stats.cached_prompt_tokens
    assert again.text == plain.generate(system + "Hello", max_new_tokens=4).text

    def ask(i: int) -> None:
        answers[i] = engine.generate(PROMPTS[i], **SETTINGS[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    start_seated(engine.batcher, threads, 2, monkeypatch)
    for t in threads:
        t.join(60)
    engine.close()
    assert [(a.text, a.finish_reason) for a in answers] == [(e.text, e.finish_reason) for e in expected]
    assert engine.batcher.sequence_steps > engine.batcher.steps


def test_mlx_restored_keys_and_values_give_the_same_logits(mlx_artifacts):
    from edgekit.runtimes.mlx_batch import MlxBatchRuntime

    batch = MlxBatchRuntime(mlx_artifacts["gemma"], CONTEXT, slots=2)
    batch.prepare()
    _restored_equals_recomputed(batch, batch.spec.vocab_size)
