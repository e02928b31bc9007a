"""Token ids to text, one token at a time: deltas that never end inside a UTF-8 character, and stop
strings that are cut out even when they arrive split across tokens."""

from __future__ import annotations

from collections.abc import Sequence

_INCOMPLETE = "\ufffd"  # what a byte-level decoder prints for a character whose bytes are not all there
_CONTEXT_TOKENS = 6


class IncrementalDecoder:
    """Decodes a window that starts a few tokens back, so that tokenizers which drop a leading space
    at the start of a decode, and characters spread over several tokens, both come out right."""

    def __init__(self, decode, context: Sequence[int] = ()):
        self._decode = decode
        self.ids = list(context[-_CONTEXT_TOKENS:])
        self.prefix = 0
        self.read = len(self.ids)

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) <= len(before) or after.endswith(_INCOMPLETE):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]

    def flush(self) -> str:
        """What is still held back at the end (a character that never completed)."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :]


class StopStrings:
    """Holds back text that could be the start of a stop string until it is known not to be."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.shown = 0
        self.hit: str | None = None

    def push(self, delta: str) -> str:
        """Add decoded text; return what can be shown now. After a stop string, `hit` is set."""
        self.text += delta
        if not self.stops:
            return self._show(len(self.text))
        start = max(0, self.shown - self.longest + 1)
        found = [(i, s) for s in self.stops if (i := self.text.find(s, start)) >= 0]
        if found:
            cut, self.hit = min(found)
            self.text = self.text[:cut]
            return self._show(cut)
        return self._show(len(self.text) - self._held())

    def flush(self) -> str:
        return self._show(len(self.text))

    def _held(self) -> int:
        tail = self.text[self.shown :]
        for n in range(min(self.longest - 1, len(tail)), 0, -1):
            if any(s.startswith(tail[-n:]) for s in self.stops):
                return n
        return 0

    def _show(self, end: int) -> str:
        out = self.text[self.shown : end]
        self.shown = max(self.shown, end)
        return out
