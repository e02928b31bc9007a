"""Speculative decoding: cheap proposals for the next tokens, checked by the model in one verify
pass (the runtime's `verify`), keeping the longest prefix that the rejection rule accepts.

The rule keeps the output distributed exactly as plain sampling from the target distribution p
(every penalty and filter of the sampler applied): a proposed token x, drawn from a proposal
distribution q, is accepted with probability min(1, p(x)/q(x)); on rejection the token is drawn
from max(0, p - q), renormalized. Prompt lookup proposes a point mass (q(x) = 1), so x is accepted
with probability p(x) and a rejection draws from p without x; a draft model would pass its own q.
Greedy decoding has p a point mass too, so it accepts exactly the tokens plain decoding picks.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import EdgekitError
from .sampling import Sampler

SPECULATION_MODES = ("off", "lookup", "draft")

Distribution = tuple[np.ndarray, np.ndarray]  # token ids, their probabilities

# prompt lookup follows one of the latest LOOKUP_CANDIDATES occurrences of the text's last two
# tokens (single tokens match too often to pay): the one whose match reaches furthest back
LOOKUP_CANDIDATES = 32
# tokens proposed after a match of at least n tokens, longest first (bench/speculative_race.py's
# tasks: a match of 2 got its first proposal accepted half the time, of 3 80%, of 6 or more 90%)
LOOKUP_LENGTHS = ((6, 8), (3, 4), (2, 2))


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids a and b share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def check_speculation(mode: str) -> str:
    if mode not in SPECULATION_MODES:
        raise EdgekitError(f"speculation={mode!r} is not a mode; choose one of: {', '.join(SPECULATION_MODES)}")
    return mode


@dataclass(frozen=True)
class Proposal:
    tokens: list[int]
    # per token, the distribution it was drawn from; None: certain tokens (prompt lookup)
    drafts: list[Distribution] | None = None


@dataclass(frozen=True)
class Pacing:
    """When a proposer's verify passes are judged, and how long it pauses when they do not pay."""

    judge_after: int  # passes in the window before the first judgment
    pause_first: int  # tokens decoded plainly after a failed judgment
    growth: int  # the pause grows this many times with each further failure
    probe: int  # tokens proposed by the first pass after a pause
    timed: bool  # judge by measured times (else by the COST model)
    give_up: bool  # a first judgment with nothing accepted pauses as long as allowed
    adaptive: bool  # the block grows and shrinks with acceptance; else it is the most, cut by the proposer


# prompt lookup proposes for free, so its passes are judged over more of them, and sizes its own
# proposals by how long its match is; a draft model's proposals cost steps of their own, measured,
# and a draft that gets nothing through is given up early
LOOKUP_PACING = Pacing(judge_after=4, pause_first=16, growth=2, probe=8, timed=False, give_up=False, adaptive=False)
DRAFT_PACING = Pacing(judge_after=2, pause_first=64, growth=4, probe=2, timed=True, give_up=True, adaptive=True)


class PromptLookup:
    """Proposes what followed an earlier occurrence of the last two tokens in the prompt and the text
    so far: of their latest LOOKUP_CANDIDATES occurrences, the one whose match with the text reaches
    furthest back (the latest among equals), and the longer that match, the more tokens
    (LOOKUP_LENGTHS). An index from each pair of tokens to the positions after it grows as tokens
    arrive, so a proposal costs a few comparisons."""

    pacing = LOOKUP_PACING
    cost = 0.0  # proposing takes no model step

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.followers: dict[tuple[int, int], list[int]] = {}

    def propose(self, tokens: Sequence[int], most: int) -> list[int]:
        """Up to `most` tokens to follow `tokens`, which extends what this lookup saw before."""
        self._index(tokens)
        known = self.tokens
        if len(known) < 3:
            return []
        best, longest = 0, 0
        for start in reversed(self.followers.get((known[-2], known[-1]), [])[-LOOKUP_CANDIDATES:]):
            if (match := self._match(start)) > longest:
                best, longest = start, match
        if not longest:
            return []
        length = next(n for at_least, n in LOOKUP_LENGTHS if longest >= at_least)
        return known[best : best + min(most, length)]

    def _match(self, start: int) -> int:
        """How many tokens before `start` equal the text's last ones (at most the longest LOOKUP_LENGTHS key)."""
        known, n = self.tokens, 0
        while n < LOOKUP_LENGTHS[0][0] and n < start and known[start - 1 - n] == known[-1 - n]:
            n += 1
        return n

    def prepare(self, prompt: Sequence[int]) -> None:
        """Nothing to run before the first proposal: the prompt is indexed as it is read."""

    def proposal(self, history: Sequence[int], most: int, sampler: Sampler) -> Proposal:
        return Proposal(self.propose(history, most))

    def _index(self, tokens: Sequence[int]) -> None:
        if len(tokens) < len(self.tokens):  # another text: start over
            self.tokens, self.followers = [], {}
        seen = len(self.tokens)
        self.tokens.extend(tokens[seen:])
        # the pair ending just before position t points at t; the newest pair waits for its follower
        for t in range(max(seen, 2), len(self.tokens)):
            self.followers.setdefault((self.tokens[t - 2], self.tokens[t - 1]), []).append(t)


class DraftModel:
    """A smaller model with the target's tokenizer that proposes the next tokens by sampling from
    its own distribution (greedy: its argmax) with the request's sampler settings. It keeps its
    own KV cache between calls, holding `cached`; each proposal first runs what it has not seen."""

    pacing = DRAFT_PACING

    def __init__(self, runtime, cost: float):
        self.runtime = runtime
        self.cost = cost  # one draft step, in target decode steps (from the weight bytes each reads)
        self.cached: list[int] = []

    def _run_unseen(self, tokens: Sequence[int]) -> np.ndarray:
        """Run what the cache does not hold of `tokens` (at least the last); the last one's logits."""
        reused = min(common_prefix(self.cached, tokens), len(tokens) - 1)
        self.runtime.trim(reused)
        logits = self.runtime.prefill(tokens[reused:])
        self.cached = list(tokens)
        return logits

    def prepare(self, prompt: Sequence[int]) -> None:
        """Run the prompt through the draft with the target's prefill, so that the first proposal
        costs steps, not a prompt (the draft's share of prompt processing)."""
        self._run_unseen(prompt)

    def proposal(self, history: Sequence[int], most: int, sampler: Sampler) -> Proposal:
        most = min(most, self.runtime.max_context - len(history))
        if most <= 0:
            return Proposal([])
        logits = self._run_unseen(history)
        tokens: list[int] = []
        drafts: list[Distribution] = []
        seen = (lambda: [*history, *tokens]) if sampler.params.repetition_penalty != 1 else (lambda: ())  # noqa: E731
        while True:
            ids, probs = sampler.distribution(logits, seen())
            token = int(ids[0]) if len(ids) == 1 else sampler.draw(ids, probs)
            tokens.append(token)
            drafts.append((ids, probs))
            if len(tokens) == most:
                break
            logits = self.runtime.decode(token)
        self.cached = [*history, *tokens[:-1]]
        return Proposal(tokens, drafts)

    def reset(self) -> None:
        self.cached = []
        self.runtime.reset()


@dataclass(frozen=True)
class Outcome:
    tokens: list[int]  # the accepted proposals, then one token drawn from the target (always one)
    accepted: int  # how many proposals were accepted


def accept_or_resample(
    sampler: Sampler, target: tuple[np.ndarray, np.ndarray], token: int, draft: tuple[np.ndarray, np.ndarray] | None
) -> tuple[bool, int]:
    """The rejection rule for one proposed token. `target` and `draft` are (token ids,
    probabilities); draft None is a point mass on `token` (prompt lookup). Returns whether the
    token was accepted, and the token that comes out (itself, or a draw from the residual)."""
    ids, p = target
    p_token = float(p[ids == token].sum())
    if draft is None:
        q_ids, q = np.array([token]), np.ones(1)
    else:
        q_ids, q = draft
    q_token = float(q[q_ids == token].sum())
    if q_token <= 0:
        raise EdgekitError(f"proposed token {token} has probability 0 under its own proposal distribution")
    if p_token >= q_token or (p_token > 0 and sampler.rng.random() < p_token / q_token):
        return True, token
    order = np.argsort(q_ids)
    at = np.clip(np.searchsorted(q_ids, ids, sorter=order), 0, len(q_ids) - 1)
    q_on_target = np.where(q_ids[order[at]] == ids, q[order[at]], 0.0)
    residual = np.maximum(p - q_on_target, 0.0)
    keep = residual > 0
    ids, residual = ids[keep], residual[keep]
    if len(ids) == 1:  # greedy: the one token plain decoding picks, no randomness spent
        return False, int(ids[0])
    return False, sampler.draw(ids, residual / residual.sum())


def verify_block(
    sampler: Sampler, rows: np.ndarray, proposed: Sequence[int], history: Sequence[int], drafts=None
) -> Outcome:
    """Walk the verify pass's logits `rows` [len(proposed) + 1, vocab]: row i is the target's
    distribution for the token after proposal i - 1 (row 0: after the last accepted token). Each
    target distribution sees the tokens accepted before it (repetition penalties), as plain
    sampling would. If every proposal is accepted, the last row gives one more token."""
    out: list[int] = []
    seen = (lambda: [*history, *out]) if sampler.params.repetition_penalty != 1 else (lambda: ())  # noqa: E731
    for i, token in enumerate(proposed):
        target = sampler.distribution(rows[i], seen())
        accepted, chosen = accept_or_resample(sampler, target, token, None if drafts is None else drafts[i])
        sampler.count(chosen)
        out.append(chosen)
        if not accepted:
            return Outcome(out, i)
    out.append(sampler(rows[len(proposed)], seen()))
    return Outcome(out, len(proposed))


class BlockSize:
    """How many tokens to propose next: with adaptive pacing (a draft model) from how the last verify
    passes went, two more after a block accepted whole, one fewer after a rejection; otherwise the
    most, which prompt lookup cuts by its match. And whether speculating pays at all: over
    the last WINDOW passes, the tokens they gave must come faster than plain decode steps give
    them — with timed pacing, the passes' own measured time (proposals included) against the plain
    steps'; otherwise a verify of 1 + k tokens counts as 1 + COST * k decode steps. When they do
    not pay, speculation pauses (see Pacing), up to PAUSE_MOST tokens."""

    START, MOST = 4, 8
    COST = 0.4  # a verify pass's extra cost per proposed token, in decode steps (ONNX cpu, SmolLM2: 0.3-0.6)
    WINDOW = 8
    PAUSE_MOST = 256
    STEP_AVERAGING = 0.3  # weight of the newest plain step in the step time's moving average

    def __init__(self, proposal_cost: float = 0.0, pacing: Pacing = LOOKUP_PACING) -> None:
        self.cost = self.COST + proposal_cost  # a draft model's step adds to each proposal's cost
        self.pacing = pacing
        self.k = self.START if pacing.adaptive else self.MOST
        self.recent: deque[tuple[int, int, float | None]] = deque(maxlen=self.WINDOW)  # proposed, accepted, s
        self.pause = pacing.pause_first
        self.paused_for = 0  # tokens left to decode plainly
        self.judged = False
        self.step_seconds: float | None = None  # a plain decode step, on average

    def next(self) -> int:
        """The number of tokens to propose now (0: decode plainly this step)."""
        if self.paused_for > 0:
            self.paused_for -= 1
            return 0
        return self.k

    def plain_step(self, seconds: float) -> None:
        """A plain decode step took `seconds`."""
        a = self.STEP_AVERAGING
        self.step_seconds = seconds if self.step_seconds is None else (1 - a) * self.step_seconds + a * seconds

    def record(self, proposed: int, accepted: int, seconds: float | None = None) -> None:
        """A verify pass of `proposed` tokens accepted `accepted` of them in `seconds` (proposing included)."""
        pacing = self.pacing
        if pacing.adaptive:
            self.k = min(self.MOST, self.k + 2) if accepted == proposed else max(1, self.k - 1)
        self.recent.append((proposed, accepted, seconds))
        if len(self.recent) < pacing.judge_after:
            return
        first, self.judged = not self.judged, True
        if self._pays():
            self.pause = pacing.pause_first
            return
        if first and pacing.give_up and not any(a for _, a, _ in self.recent):
            self.pause = self.PAUSE_MOST
        self.paused_for, self.pause = self.pause, min(self.PAUSE_MOST, pacing.growth * self.pause)
        self.recent.clear()
        self.k = pacing.probe

    def _pays(self) -> bool:
        gained = sum(a + 1 for _, a, _ in self.recent)  # each pass also gives the target's own token
        times = [s for _, _, s in self.recent]
        if self.pacing.timed and self.step_seconds is not None and None not in times:
            return gained * self.step_seconds > sum(times)  # type: ignore[arg-type]
        proposed = sum(p for p, _, _ in self.recent)
        return gained - len(self.recent) > self.cost * proposed


class Speculator:
    """Speculative decoding for one generation: proposals from prompt lookup or a draft model, a
    block size that follows the acceptance rate and the measured time of passes and plain steps,
    and the counts the stats report."""

    def __init__(self, runtime, sampler: Sampler, proposer: PromptLookup | DraftModel | None = None):
        self.runtime = runtime
        self.sampler = sampler
        self.proposer = proposer if proposer is not None else PromptLookup()
        self.size = BlockSize(self.proposer.cost, self.proposer.pacing)
        self.proposed = 0
        self.accepted = 0

    def prepare(self, prompt: Sequence[int]) -> None:
        """The prompt was prefilled: the proposer gets ready for it (a draft model runs it too)."""
        self.proposer.prepare(prompt)

    def _shared(self) -> bool:
        """Whether other sequences share the model's runs now (a slot of continuous batching): a
        verify pass of one slot runs alone while the others wait (the batcher steps several
        sequences one token each; ONNX Runtime's GroupQueryAttention takes several new tokens for
        one sequence only), and their batched steps already give more tokens per read of the
        weights (lookup at 8 clients of `edgekit serve` cost x0.75)."""
        return getattr(self.runtime, "others_running", 0) > 0

    def step(self, history: Sequence[int], room: int) -> list[int] | None:
        """The tokens that follow `history` (whose last token the cache does not hold yet) from
        one verify pass, at most `room` of them; None when there is nothing to propose or the
        runs are shared, and the caller decodes one token plainly (and reports its time to
        `plain_step`)."""
        if self._shared():
            return None
        started = time.perf_counter()
        most = min(self.size.next(), room - 1)
        proposal = self.proposer.proposal(history, most, self.sampler) if most > 0 else Proposal([])
        proposed = proposal.tokens
        if not proposed:
            return None
        rows = self.runtime.verify([history[-1], *proposed])
        outcome = verify_block(self.sampler, rows, proposed, history, proposal.drafts)
        self.runtime.trim(self.runtime.length - len(proposed) + outcome.accepted)
        self.size.record(len(proposed), outcome.accepted, time.perf_counter() - started)
        self.proposed += len(proposed)
        self.accepted += outcome.accepted
        return outcome.tokens

    def plain_step(self, seconds: float) -> None:
        if not self._shared():  # a shared step's time is the whole batch's
            self.size.plain_step(seconds)
