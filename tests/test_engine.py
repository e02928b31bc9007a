"""The generation API on a tiny exported artifact: generate, stream, chat, stops, seeds, context."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import edgekit
from edgekit.errors import EdgekitError
from edgekit.generation.engine import GenerationConfig
from edgekit.runtimes.base import EMPTY_PROMPT


@pytest.fixture(scope="module")
def engine(tiny_artifact):
    return edgekit.load(tiny_artifact)


def test_load_picks_a_profile_and_caps_its_context(engine):
    assert engine.backend == "onnx"
    assert engine.profile is not None and engine.profile.name.startswith("generic-")
    assert engine.max_context == 128  # the profile asks for 4096; the artifact was exported for 128


def test_generate_returns_text_ids_reason_and_stats(engine):
    done = engine.generate("The quick brown fox", max_new_tokens=12, ignore_eos=True)
    assert done.finish_reason == "length" and len(done.token_ids) == 12
    assert done.text == engine.tokenizer.decode(done.token_ids)
    assert done.usage["completion_tokens"] == 12 and done.usage["total_tokens"] == done.usage["prompt_tokens"] + 12
    stats = done.stats
    assert stats.decode_steps == 11 and stats.generation_tokens_per_s > 0 and stats.prompt_tokens_per_s > 0
    assert 0 < stats.time_to_first_token and stats.peak_memory_mb > 0


def test_greedy_tokens_match_the_runtime_driven_by_hand(engine, tiny_artifact):
    from edgekit.generation.loader import load_runtime

    loaded = load_runtime(tiny_artifact)
    ids = loaded.tokenizer.encode("Paris is the capital of")
    logits, expected = loaded.runtime.prefill(ids), []
    for _ in range(10):
        expected.append(int(np.argmax(logits)))
        logits = loaded.runtime.decode(expected[-1])
    assert engine.generate(ids, max_new_tokens=10, ignore_eos=True).token_ids == expected


def test_stream_adds_up_to_generate(engine):
    chunks = list(engine.stream("Edge devices", max_new_tokens=16, ignore_eos=True))
    done = engine.generate("Edge devices", max_new_tokens=16, ignore_eos=True)
    assert "".join(c.text for c in chunks) == done.text
    assert [t for c in chunks for t in c.token_ids] == done.token_ids
    assert chunks[-1].finish_reason == "length" and chunks[-1].stats is not None
    assert all(c.finish_reason is None and c.stats is None for c in chunks[:-1])


def test_same_seed_same_tokens(engine):
    kw = {"max_new_tokens": 20, "temperature": 1.0, "top_p": 0.95, "ignore_eos": True}
    a = engine.generate("Hello", seed=11, **kw).token_ids
    assert engine.generate("Hello", seed=11, **kw).token_ids == a
    assert engine.generate("Hello", seed=12, **kw).token_ids != a


def _clean_completion(engine):
    """A prompt whose greedy answer (random weights) has readable text across several tokens."""
    for prompt in ("Numbers like", "The quick", "Paris is", "def add", "Hello", "Edge"):
        full = engine.generate(prompt, max_new_tokens=24, ignore_eos=True)
        for n in range(2, len(full.token_ids)):
            end = len(engine.tokenizer.decode(full.token_ids[:n]))
            window = full.text[end - 2 : end + 2]
            if end >= 2 and len(window) == 4 and "\ufffd" not in window and full.text.index(window) == end - 2:
                return prompt, full, window
    raise AssertionError("no readable greedy answer from the tiny model")


def test_stop_string_split_across_tokens_is_cut(engine):
    prompt, full, stop = _clean_completion(engine)  # stop: two characters of one token, two of the next
    done = engine.generate(prompt, max_new_tokens=24, ignore_eos=True, stop=[stop])
    assert done.finish_reason == "stop" and done.text == full.text[: full.text.index(stop)]
    streamed = "".join(c.text for c in engine.stream(prompt, max_new_tokens=24, ignore_eos=True, stop=stop))
    assert streamed == done.text


def test_stop_token_ids_end_the_answer_and_ignore_eos_overrides_eos(engine):
    first = engine.generate("Hello", max_new_tokens=5, ignore_eos=True).token_ids
    stopped = engine.generate("Hello", max_new_tokens=5, stop_token_ids=[first[2]], ignore_eos=True)
    assert stopped.finish_reason == "stop" and stopped.token_ids == first[:2]
    eos = engine.tokenizer.eos_token_ids
    assert eos  # the tiny tokenizer's <|endoftext|>
    forced = engine.generate([*engine.tokenizer.encode("Hi"), eos[0]], max_new_tokens=3, ignore_eos=True)
    assert len(forced.token_ids) == 3


def test_chat_uses_the_template_and_the_cache_is_reused(engine):
    messages = [{"role": "user", "content": "Hi"}]
    first = engine.chat(messages, max_new_tokens=6, ignore_eos=True)
    expected_prompt = engine.tokenizer.apply_chat_template(messages)
    assert first.stats.prompt_tokens == len(expected_prompt)
    follow = [*messages, {"role": "assistant", "content": first.text}, {"role": "user", "content": "More"}]
    second = engine.chat(follow, max_new_tokens=6, ignore_eos=True)
    assert second.stats.cached_prompt_tokens > len(expected_prompt) // 2
    engine.reset()
    fresh = engine.chat(follow, max_new_tokens=6, ignore_eos=True)
    assert fresh.stats.cached_prompt_tokens == 0 and fresh.token_ids == second.token_ids


def test_prefill_in_chunks_gives_the_same_logits(tiny_artifact):
    from edgekit.generation.loader import load_runtime

    whole = load_runtime(tiny_artifact, prefill_chunk=128).runtime
    chunked = load_runtime(tiny_artifact, prefill_chunk=3).runtime
    assert load_runtime(tiny_artifact).runtime.prefill_chunk == 256  # bounded whatever the context
    ids = list(range(40, 90))
    np.testing.assert_allclose(chunked.prefill(ids), whole.prefill(ids), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(chunked.decode(7), whole.decode(7), rtol=1e-4, atol=1e-4)


def test_prompt_longer_than_the_context(engine):
    long = list(range(10, 10 + 200))
    with pytest.raises(EdgekitError, match="the prompt has 200 tokens but the context is 128"):
        engine.generate(long)
    done = engine.generate(long, max_new_tokens=8, truncate=True, ignore_eos=True)
    assert done.stats.prompt_tokens == 120 and len(done.token_ids) == 8


def test_generation_stops_at_the_end_of_the_context(engine):
    done = engine.generate(list(range(10, 130)), max_new_tokens=50, ignore_eos=True)
    assert done.finish_reason == "length" and len(done.token_ids) == 9


@pytest.mark.parametrize(
    "prompt,message",
    [
        ([], "empty"),
        ([1, "a"], "all token ids"),
        ([5, 10**6], "all token ids"),
        ([{"content": "no role"}], "no 'role'"),
    ],
)
def test_bad_prompts(engine, prompt, message):
    with pytest.raises(EdgekitError, match=message):
        engine.generate(prompt)


def test_bad_options(engine, tiny_artifact):
    with pytest.raises(EdgekitError, match="unknown generation option 'temprature'"):
        engine.generate("hi", temprature=0.5)
    with pytest.raises(EdgekitError, match="top_p"):
        engine.generate("hi", top_p=1.5)
    with pytest.raises(EdgekitError, match="unknown load option 'thread'"):
        edgekit.load(tiny_artifact, thread=2)
    with pytest.raises(EdgekitError, match="no device profile named 'toaster'; shipped profiles: apple-silicon"):
        edgekit.load(tiny_artifact, profile="toaster")
    with pytest.raises(EdgekitError, match="is a cpu artifact but profile nvidia-cuda runs cuda ones"):
        edgekit.load(tiny_artifact, profile="nvidia-cuda")


def test_defaults_and_overrides(tiny_artifact):
    engine = edgekit.load(tiny_artifact, profile=None, generation=GenerationConfig(max_new_tokens=4, ignore_eos=True))
    assert engine.profile is None and len(engine.generate("Hi").token_ids) == 4
    assert len(engine.generate("Hi", max_new_tokens=2).token_ids) == 2


def test_huge_pages_off_gives_the_same_tokens(tiny_artifact, monkeypatch):
    from edgekit.runtimes import onnx

    calls = []
    monkeypatch.setattr(onnx, "collapse_filled_heap", lambda: calls.append(1) or 0)
    tokens = {
        flag: edgekit.load(tiny_artifact, profile=None, huge_pages=flag).generate(
            "Hi", max_new_tokens=6, ignore_eos=True
        )
        for flag in (True, False)
    }
    assert calls == [1]  # only the load that asked for it
    assert tokens[True].token_ids == tokens[False].token_ids


def test_one_engine_shared_by_threads_serializes(engine):
    expected = {p: engine.generate(p, max_new_tokens=8, ignore_eos=True).token_ids for p in ("Hello", "Paris", "def")}
    results: dict[str, list[int]] = {}

    def worker(prompt):
        results[prompt] = engine.generate(prompt, max_new_tokens=8, ignore_eos=True).token_ids

    threads = [threading.Thread(target=worker, args=(p,)) for p in expected for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


def test_one_engine_per_thread_runs_in_parallel(engine, tiny_artifact):
    prompts = ("Hello", "Paris", "def", "Once")
    expected = {p: engine.generate(p, max_new_tokens=8, ignore_eos=True).token_ids for p in prompts}
    engines = {p: edgekit.load(tiny_artifact, profile=None, threads=1) for p in prompts}
    results: dict[str, list[int]] = {}
    barrier = threading.Barrier(len(prompts))

    def worker(prompt):
        barrier.wait()
        results[prompt] = engines[prompt].generate(prompt, max_new_tokens=8, ignore_eos=True).token_ids

    threads = [threading.Thread(target=worker, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


def test_source_checkpoint_runs_on_the_reference(tiny_models):
    engine = edgekit.load(tiny_models["qwen3"], profile=None)
    assert engine.backend.startswith("numpy")
    assert len(engine.generate("Hi", max_new_tokens=3, ignore_eos=True).token_ids) == 3


def test_empty_prompt_is_one_clear_error_on_the_reference(tiny_models):
    runtime = edgekit.load(tiny_models["qwen3"], profile=None).runtime
    assert type(runtime).__name__ == "ReferenceRuntime"
    with pytest.raises(EdgekitError) as raised:
        runtime.prefill([])
    assert str(raised.value) == EMPTY_PROMPT and runtime.length == 0
