"""The one generation API: `edgekit.load(...)` returns an Engine; generate, stream and chat work the
same on every backend because everything above the Runtime protocol lives here."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..artifact import Manifest
from ..device_profiles import DeviceProfile
from ..errors import EdgekitError
from .constraints import Constraint, ConstraintCompiler, ConstraintError, TokenMask, constraint_from_options
from .loader import Loaded
from .sampling import Sampler, SamplingParams
from .speculative import DraftModel, PromptLookup, Speculator, check_speculation, common_prefix
from .text_stream import IncrementalDecoder, StopStrings
from .tools import ToolCall, ToolCallGuide, ToolRequest, tool_request

Message = dict[str, Any]
Prompt = str | Sequence[int] | Sequence[Message]


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # strings that end the answer; not part of the returned text
    stop_token_ids: tuple[int, ...] = ()  # on top of the model's end-of-sequence ids
    ignore_eos: bool = False  # keep going past end-of-sequence ids (benchmarks)
    truncate: bool = False  # drop the oldest prompt tokens instead of refusing a prompt too long
    # what the answer must match (at most one; needs the `structured` extra)
    response_format: dict[str, Any] | None = None  # OpenAI's {"type": "json_object" | "json_schema", ...}
    json_schema: dict[str, Any] | None = None
    regex: str | None = None
    choices: tuple[str, ...] | None = None
    grammar: str | None = None  # Lark or llama.cpp's GBNF
    # speculative decoding, proposals verified in one pass (the same distribution when sampling):
    # "lookup" from the prompt and the text so far, "draft" from the engine's draft model; "off"
    speculation: str = "off"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise EdgekitError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        check_speculation(self.speculation)
        _ = self.sampling  # validates the sampling fields
        _ = self.constraint  # checks the constraint options' shape (compiling waits for a request)

    @property
    def sampling(self) -> SamplingParams:
        names = [f.name for f in fields(SamplingParams)]
        return SamplingParams(**{name: getattr(self, name) for name in names})

    @property
    def constraint(self) -> Constraint | None:
        return constraint_from_options(self.response_format, self.json_schema, self.regex, self.choices, self.grammar)

    def updated(self, **changes: Any) -> GenerationConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise EdgekitError(f"unknown generation option {unknown[0]!r}; options: {', '.join(sorted(known))}")
        changes = {k: v for k, v in changes.items() if v is not None}
        for key in ("stop", "stop_token_ids", "choices"):
            if isinstance(changes.get(key), str | int):
                changes[key] = (changes[key],)
            if key in changes:
                changes[key] = tuple(changes[key])
        return replace(self, **changes)


@dataclass
class Stats:
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # reused from the previous call's KV cache, not recomputed
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    generation_seconds: float = 0.0
    decode_steps: int = 0  # runs of the model after the prompt (a decode step or a verify pass)
    decoded_tokens: int = 0  # tokens those runs produced (the first token comes from the prompt's)
    time_to_first_token: float = 0.0
    peak_memory_mb: float | None = None
    speculation: str = "off"  # the mode used, or "off: why" when one was asked for and could not run
    proposed_tokens: int = 0  # speculative decoding: tokens proposed, and accepted by the model
    accepted_tokens: int = 0

    @property
    def prompt_tokens_per_s(self) -> float:
        computed = self.prompt_tokens - self.cached_prompt_tokens
        return computed / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generation_tokens_per_s(self) -> float:
        # the first token comes from the prompt pass; the ones after it from decode steps or verify passes
        tokens = self.decoded_tokens
        return tokens / self.generation_seconds if tokens > 0 and self.generation_seconds > 0 else 0.0

    @property
    def usage(self) -> dict[str, Any]:
        """OpenAI's token counts (cached_tokens: prompt tokens whose keys and values were reused)."""
        prompt, completion = self.prompt_tokens, self.generated_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": self.cached_prompt_tokens},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "prompt_tokens_per_s": self.prompt_tokens_per_s,
            "generation_tokens_per_s": self.generation_tokens_per_s,
        }

    def summary(self) -> str:
        line = (
            f"prompt: {self.prompt_tokens} tokens, {self.prompt_tokens_per_s:.1f} tokens/s | "
            f"generation: {self.generated_tokens} tokens, {self.generation_tokens_per_s:.1f} tokens/s"
        )
        if self.speculation != "off":
            line += f" | {self.speculation}: {self.accepted_tokens} of {self.proposed_tokens} proposed tokens accepted"
        return line


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end-of-sequence id or stop string), "length" or "tool_calls"
    stats: Stats
    tool_calls: list[ToolCall] = field(default_factory=list)

    @property
    def usage(self) -> dict[str, Any]:
        return self.stats.usage


@dataclass
class Chunk:
    text: str  # new text since the previous chunk; whole characters only
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # set on the last chunk, which also carries the stats
    stats: Stats | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)  # on the last chunk


def peak_memory_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


class Engine:
    """A loaded model. Calls on one engine run one at a time (a lock serializes them), so an engine
    can be shared between threads; for parallel answers, load one engine per thread.

    The KV cache is kept between calls: a prompt that starts with what the cache holds (the next
    turn of a chat) only computes its new tokens."""

    def __init__(
        self,
        loaded: Loaded,
        profile: DeviceProfile | None = None,
        defaults: GenerationConfig | None = None,
        draft: DraftModel | None = None,
    ):
        self.runtime = loaded.runtime
        self.draft = draft  # a smaller model with the same tokenizer, for speculation="draft"
        self.tokenizer = loaded.tokenizer
        self.spec = loaded.spec
        self.vocab_size: int = loaded.vocab_size
        self.name: str = loaded.name
        self.backend: str = loaded.backend
        self.manifest: Manifest | None = loaded.manifest
        self.profile = profile
        self.defaults = defaults or GenerationConfig()
        self._lock = threading.Lock()
        self._cached: list[int] = []  # the token ids whose keys and values the runtime holds
        self._constraints: ConstraintCompiler | None = None

    @property
    def max_context(self) -> int:
        return self.runtime.max_context

    def prompt_ids(
        self, prompt: Prompt, add_generation_prompt: bool = True, tools: ToolRequest | None = None
    ) -> list[int]:
        """A string is encoded as is (with the tokenizer's special tokens); a list of token ids is
        taken as given; a list of messages goes through the chat template (with `tools`' tools, and
        earlier tool calls and results written the way the template takes them)."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        items = list(prompt)
        if not items:
            raise EdgekitError("the prompt is empty; pass a string, token ids or chat messages")
        if all(isinstance(m, dict) for m in items):
            if tools is None and any(m.get("tool_calls") or m.get("role") == "tool" for m in items):
                tools = self.tool_request(None)
            if tools is not None:
                return self.tokenizer.apply_chat_template(
                    tools.messages(items), add_generation_prompt=add_generation_prompt, tools=tools.template_tools
                )
            return self.tokenizer.apply_chat_template(items, add_generation_prompt=add_generation_prompt)
        vocab = self.vocab_size
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in items):
            raise EdgekitError(
                f"a prompt list must be all token ids in [0, {vocab}) or all chat messages "
                "({'role': ..., 'content': ...})"
            )
        return items

    def generate(self, prompt: Prompt, **options: Any) -> Completion:
        text, ids = [], []
        last: Chunk | None = None
        for last in self.stream(prompt, **options):
            text.append(last.text)
            ids.extend(last.token_ids)
        assert last is not None and last.stats is not None and last.finish_reason is not None
        return Completion("".join(text), ids, last.finish_reason, last.stats, last.tool_calls)

    def chat(self, messages: str | Sequence[Message], **options: Any) -> Completion:
        """Answer a conversation through the model's chat template (a string is one user message).
        tools=[...] (OpenAI's function tools), tool_choice="auto" | "none" | "required" |
        {"type": "function", "function": {"name": ...}} and parallel_tool_calls let it call tools:
        the Completion then has `tool_calls` and finish reason "tool_calls"."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if not messages or not all(isinstance(m, dict) for m in messages):
            raise EdgekitError("chat() takes a list of messages like {'role': 'user', 'content': '...'}")
        return self.generate(messages, **options)

    def stream(
        self,
        prompt: Prompt,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        parallel_tool_calls: bool = False,
        **options: Any,
    ) -> Iterator[Chunk]:
        """Yield chunks as tokens arrive; the last chunk has the finish reason and the stats (and the
        tool calls; text that is part of a call is not shown)."""
        config = self.defaults.updated(**options)
        request = None
        if tools is not None or tool_choice is not None:
            if isinstance(prompt, str) or not all(isinstance(m, dict) for m in prompt):
                raise EdgekitError("tools need a chat: pass messages like {'role': 'user', 'content': '...'}")
            request = self.tool_request(tools, tool_choice, parallel_tool_calls)
            if request.mode != "none" and config.constraint is not None:
                raise ConstraintError("pass tools or a constraint (response_format, regex, ...), not both")
        ids = self.prompt_ids(prompt, tools=request)
        with self._lock:
            yield from self._generate(ids, config, request if request is not None and request.mode != "none" else None)

    def tool_request(
        self, tools: Sequence[dict[str, Any]] | None, tool_choice: Any = None, parallel: bool = False
    ) -> ToolRequest:
        template = self.tokenizer.chat_template.source if self.tokenizer.chat_template else None
        return tool_request(template, None if tools is None else list(tools), tool_choice, parallel)

    def _compiler(self) -> ConstraintCompiler:
        if self._constraints is None:
            vocab = max(self.vocab_size, self.tokenizer.vocab_size)
            self._constraints = ConstraintCompiler(self.tokenizer.files.tokenizer_json, vocab)
        return self._constraints

    def _guide(
        self, config: GenerationConfig, tools: ToolRequest | None, eos: set[int]
    ) -> TokenMask | ToolCallGuide | None:
        """What masks the logits of this answer: the constraint's grammar, the tool-call driver, or nothing."""
        eos_ids = sorted(eos) or list(self.tokenizer.eos_token_ids)
        if tools is not None:
            markers = (tools.format.open, tools.format.close)
            special = {m: i for m in markers if m and (i := self.tokenizer.special_id(m)) is not None}
            raw = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
            return ToolCallGuide(tools, self._compiler(), eos_ids, raw, special)
        constraint = config.constraint
        return None if constraint is None else self._compiler().compile(constraint, eos_ids)

    def _fit(self, ids: list[int], config: GenerationConfig) -> list[int]:
        if not ids:
            raise EdgekitError("the prompt is empty (it encodes to no tokens)")
        if config.truncate and config.max_new_tokens < self.max_context:
            return ids[-(self.max_context - config.max_new_tokens) :]
        if len(ids) >= self.max_context:
            raise EdgekitError(
                f"the prompt has {len(ids)} tokens but the context is {self.max_context}; shorten it, "
                "load with a larger max_context, or pass truncate=True to drop the oldest tokens"
            )
        return ids

    def _prefill(self, ids: list[int]):
        """Reuse the cached prefix; at least the prompt's last token is run to get its logits."""
        reused = min(common_prefix(self._cached, ids), len(ids) - 1)
        self.runtime.trim(reused)
        self._cached = list(ids)
        return self.runtime.prefill(ids[reused:]), reused

    def _speculator(
        self, config: GenerationConfig, guide: TokenMask | ToolCallGuide | None, sampler: Sampler
    ) -> tuple[Speculator | None, str]:
        """The speculator of this answer (None: token by token) and the mode the stats report."""
        if config.speculation == "off":
            return None, "off"
        if config.speculation == "draft" and self.draft is None:
            raise EdgekitError(
                "speculation='draft' needs a draft model: load with edgekit.load(target, draft=DRAFT) "
                "(--draft DRAFT), or name one in the profile's [runtime] draft"
            )
        if guide is not None:
            return None, "off: constrained decoding runs token by token"
        if self.runtime.why_no_verify:
            return None, f"off: {self.runtime.why_no_verify}"
        proposer = self.draft if config.speculation == "draft" else PromptLookup()
        return Speculator(self.runtime, sampler, proposer), config.speculation

    def _generate(self, ids: list[int], config: GenerationConfig, tools: ToolRequest | None = None) -> Iterator[Chunk]:
        ids = self._fit(ids, config)
        budget = min(config.max_new_tokens, self.max_context - len(ids) + 1)
        eos = set(config.stop_token_ids) | (set() if config.ignore_eos else set(self.tokenizer.eos_token_ids))
        guide = self._guide(config, tools, eos)
        calls_guide = guide if isinstance(guide, ToolCallGuide) else None
        sampler = Sampler(config.sampling)
        text = IncrementalDecoder(self.tokenizer.decode, ids)
        stops = StopStrings(config.stop)
        stats = Stats(prompt_tokens=len(ids))
        speculator, stats.speculation = self._speculator(config, guide, sampler)
        history = list(ids)
        out: list[int] = []
        pending: list[int] = []  # ids whose text is still held back
        finish = "length"
        start = time.perf_counter()

        def choose(logits):
            return sampler(guide.apply(logits) if guide is not None else logits, history)

        try:
            logits, stats.cached_prompt_tokens = self._prefill(ids)
            if speculator is not None:
                speculator.prepare(ids)
            stats.prompt_seconds = time.perf_counter() - start
            block = [choose(logits)]  # tokens chosen by one run of the model, taken in order
            stats.time_to_first_token = time.perf_counter() - start
            decode_start = time.perf_counter()
            done = False
            while not done:
                for token in block:
                    if stats.decode_steps:  # not the first token, which the prompt's run gave
                        stats.decoded_tokens += 1
                    done = True
                    if token in eos:
                        finish = "stop"
                        break
                    out.append(token)
                    history.append(token)
                    pending.append(token)
                    if guide is not None and not guide.accept(token):
                        raise ConstraintError(f"the constraint refused token {token}: {guide.error}")
                    delta = text.push(token)
                    shown = stops.push(calls_guide.visible(delta) if calls_guide is not None else delta)
                    if stops.hit is not None:
                        finish = "stop"
                        break
                    if shown:
                        yield Chunk(shown, pending)
                        pending = []
                    if guide is not None and guide.finished:  # nothing but end-of-sequence can follow
                        finish = "stop"
                        break
                    if len(out) >= budget:
                        break
                    done = False
                if done:
                    break
                # the next run: a verify pass over proposed tokens, or one decode step
                room = min(budget - len(out), self.max_context - self.runtime.length)
                block = speculator.step(history, room) if speculator is not None else None
                if block is None:
                    step_start = time.perf_counter()
                    block = [choose(self.runtime.decode(history[-1]))]
                    if speculator is not None:
                        speculator.plain_step(time.perf_counter() - step_start)
                self._cached += [history[-1], *block[:-1]]  # the last token and the accepted proposals
                stats.decode_steps += 1
            stats.generation_seconds = time.perf_counter() - decode_start
            if speculator is not None:
                stats.proposed_tokens, stats.accepted_tokens = speculator.proposed, speculator.accepted
        except BaseException:
            self._cached = []  # a generation stopped half way leaves the cache in an unknown state
            self.runtime.reset()
            if self.draft is not None:
                self.draft.reset()
            raise
        stats.generated_tokens = len(out)
        stats.peak_memory_mb = peak_memory_mb()
        rest = ""
        if stops.hit is None:
            held = text.flush()
            if calls_guide is not None:
                held = calls_guide.visible(held) + calls_guide.flush()
            rest = stops.push(held)  # held-back text can still hold a stop string
            if stops.hit is not None:
                finish = "stop"
            else:
                rest += stops.flush()
        calls: list[ToolCall] = []
        if calls_guide is not None:
            calls, finish = calls_guide.result(finish)
        yield Chunk(rest, pending, finish, stats, calls)

    def reset(self) -> None:
        """Forget the cached conversation."""
        with self._lock:
            self._cached = []
            self.runtime.reset()
            if self.draft is not None:
                self.draft.reset()
