"""Streaming text: whole characters only, and stop strings cut even when split across tokens."""

from __future__ import annotations

import pytest

from edgekit.generation.text_stream import IncrementalDecoder, StopStrings
from edgekit.testing.tiny import tiny_tokenizer

TEXT = "Café 😀 and 🚀 say 你好世界, naïve résumé!"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_the_tiny_tokenizer_splits_characters_across_tokens(tokenizer):
    ids = tokenizer.encode(TEXT).ids
    pieces = [tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces)  # otherwise the next test proves nothing


@pytest.mark.parametrize("context", [[], "prompt"])
def test_deltas_are_whole_characters_and_add_up(tokenizer, context):
    ids = tokenizer.encode(TEXT).ids
    before = tokenizer.encode("Hello there. ").ids if context else []
    decoder = IncrementalDecoder(tokenizer.decode, before)
    deltas = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tokenizer.decode(ids)
    assert sum(1 for d in deltas if d) < len(ids)  # some tokens were held back


def test_smollm2_tokenizer_streams_emoji_whole(smollm2_gguf):
    from edgekit.sources import open_checkpoint

    tok = open_checkpoint(smollm2_gguf).tokenizer.load()
    ids = tok.encode(TEXT).ids
    decoder = IncrementalDecoder(tok.decode)
    deltas = [decoder.push(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas) and "".join(deltas) == TEXT


def feed(stops, deltas):
    s = StopStrings(stops)
    shown = [s.push(d) for d in deltas]
    if s.hit is None:
        shown.append(s.flush())
    return "".join(shown), s.hit, shown


def test_stop_string_split_across_deltas():
    text, hit, shown = feed(["</answer>"], ["The answer is 4.<", "/ans", "wer> and more"])
    assert text == "The answer is 4." and hit == "</answer>"
    assert shown[0] == "The answer is 4."  # the '<' was held back until it could be judged


def test_held_text_is_released_when_it_is_not_a_stop():
    text, hit, shown = feed(["STOP"], ["go ST", "ORM", " now"])
    assert text == "go STORM now" and hit is None
    assert shown[0] == "go " and shown[1] == "STORM"


def test_earliest_of_several_stops_wins():
    text, hit, _ = feed(["world", "lo w"], ["hel", "lo world"])
    assert text == "hel" and hit == "lo w"


def test_no_stops_passes_everything():
    assert feed([], ["a", "b"])[0] == "ab"
