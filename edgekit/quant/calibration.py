"""Calibration data: token windows from a text file, or text sampled from the model itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import EdgekitError


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"{path}: calibration/evaluation text not found; pass a UTF-8 text file")
    data = path.read_bytes()
    if b"\0" in data[:65536]:
        raise EdgekitError(f"{path}: this is not a text file (it contains NUL bytes); pass a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EdgekitError(f"{path}: not UTF-8 text (byte {exc.start}); pass a UTF-8 text file") from None
    if not text.strip():
        raise EdgekitError(f"{path}: the file is empty; pass a text with some paragraphs of prose")
    return text


def token_windows(ids: list[int], window: int, count: int | None = None) -> list[list[int]]:
    """Consecutive non-overlapping windows of `window` tokens (the last partial one dropped unless
    it is the only one), at most `count`, spread evenly over the text."""
    windows = [ids[i : i + window] for i in range(0, max(len(ids) - window, 0) + 1, window)] or [ids]
    if count is not None and len(windows) > count:
        pick = np.linspace(0, len(windows) - 1, count).round().astype(int)
        windows = [windows[i] for i in pick]
    return windows


# Text openings for a tokenizer with no document start (document_start): the sequences then begin
# from these instead of from the model's own choice of a first token.
SEEDS = ("The", "In", "Once upon a time", "def ", "The history of", "Scientists", "# ", "When", "A", "It")
# Every other sequence of a model with a chat template starts from a user turn: calibration then
# sees the template's tokens and the answers the model gives in a chat, which is how it is used.
CHAT_SEEDS = (
    "Write a short poem about the sea.",
    "Explain how a refrigerator works.",
    "Give me three tips for learning a new language.",
    "Why do leaves change colour in autumn?",
    "How do I reverse a list in Python?",
    "Tell me a story about a brave mouse.",
    "What should I pack for a weekend hike?",
    "Summarize the causes of the First World War.",
)
# GPT-2-style vocabularies (SmolLM, Qwen, GPT-NeoX, Phi) separate pretraining documents with this
DOCUMENT_SEPARATOR = "<|endoftext|>"


def document_start(tokenizer) -> list[int] | None:
    """The tokens a pretraining document begins with: the BOS the tokenizer adds to any text (Llama,
    Mistral, Gemma), else the separator of GPT-2-style vocabularies; None when it has neither."""
    ids = tokenizer.encode("")
    if ids:
        return ids
    separator = tokenizer.special_id(DOCUMENT_SEPARATOR)
    return None if separator is None else [separator]


def seed_prompts(tokenizer, samples: int) -> list[list[int]]:
    """The starts of the self-generated sequences: a document start, so that the model writes
    whatever kind of text it holds likeliest (unconditional samples: the text its weights were fitted
    to), and for a chat model every other one a user turn in its chat template. Without a document
    start, text openings (SEEDS) instead. Calibrated on unconditional samples, the default export of
    SmolLM2 and of its off-grid copy lost 3% less KL to the source on two held-out texts than from
    the openings, for each of two rotations (README, Quality without a calibration file)."""
    start = document_start(tokenizer)
    opening = lambda i: start if start else tokenizer.encode(SEEDS[i % len(SEEDS)])  # noqa: E731
    if tokenizer.chat_template is None:
        return [opening(i) for i in range(samples)]
    turn = lambda q: tokenizer.apply_chat_template([{"role": "user", "content": q}])  # noqa: E731
    return [turn(CHAT_SEEDS[i // 2 % len(CHAT_SEEDS)]) if i % 2 else opening(i // 2) for i in range(samples)]


# sequences sampled together at most: their KV caches bound the memory (SmolLM2: 6 MB per 128 tokens)
SAMPLE_BATCH = 64


def self_generated(
    model,
    tokenizer,
    samples: int,
    length: int,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int = 50,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Token sequences sampled from the model (the fp32 reference) after short seed prompts, so
    quantization can be calibrated without any dataset; SAMPLE_BATCH at a time, `progress(done, samples)`
    after each batch."""
    starts, sequences = seed_prompts(tokenizer, samples), []
    for first in range(0, samples, SAMPLE_BATCH):
        batch = starts[first : first + SAMPLE_BATCH]
        sequences += sample_continuations(model, batch, length, seed + first, temperature, top_k)
        if progress:
            progress(len(sequences), samples)
    return sequences


def sample_continuations(
    model, starts: list[list[int]], length: int, seed: int = 0, temperature: float = 1.0, top_k: int = 50
) -> list[list[int]]:
    """Each start continued (or cut) to `length` tokens by top-k sampling. All sequences advance
    together, one batched step per token, so the weights are read once per step rather than once per
    sequence."""
    rng = np.random.default_rng(seed)
    sequences = [list(ids[:length]) for ids in starts]
    caches = [model.new_cache() for _ in sequences]
    logits = np.stack(
        [model.forward(ids, cache, all_logits=False)[-1] for ids, cache in zip(sequences, caches, strict=True)]
    )
    active = [i for i, ids in enumerate(sequences) if len(ids) < length]
    while active:
        for i in active:
            top = np.argpartition(logits[i], -top_k)[-top_k:]
            z = logits[i][top] / temperature
            p = np.exp(z - z.max())
            sequences[i].append(int(top[rng.choice(top_k, p=p / p.sum())]))
        active = [i for i in active if len(sequences[i]) < length]
        if active:
            logits[active] = model.decode_batch([sequences[i][-1] for i in active], [caches[i] for i in active])
    return sequences


def calibration_sequences(
    checkpoint,
    window: int,
    samples: int,
    path: str | Path | None = None,
    model=None,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Calibration token windows from a text file, or sampled from the model when no file is given
    (`progress` as self_generated's). `model` (a ReferenceModel of the checkpoint) is built when
    needed and not passed."""
    tokenizer = checkpoint.tokenizer.load()
    if path is not None:
        ids = tokenizer.encode(read_text(path)).ids
        if len(ids) < 16:
            raise EdgekitError(f"{path}: only {len(ids)} tokens; calibration needs at least a paragraph of text")
        return token_windows(ids, window, samples)
    from ..generation.tokenizer import TextTokenizer
    from ..reference import ReferenceModel
    from ..spec import weight_shapes

    if model is None:
        float32_bytes = 4 * sum(int(np.prod(shape)) for shape in weight_shapes(checkpoint.spec).values())
        in_memory = float32_bytes <= IN_MEMORY_LIMIT
        model = ReferenceModel.from_checkpoint(checkpoint) if in_memory else StreamedReference(checkpoint)
    return self_generated(model, TextTokenizer(checkpoint.tokenizer), samples, window, progress=progress)


# Above this, sampling reads the source one layer at a time on every step instead of holding it in
# float32 (5 GB at the Llama-3.2-1B shape): slower, since every step converts every weight again.
IN_MEMORY_LIMIT = 2**30


class StreamedReference:
    """`self_generated`'s model for a checkpoint too big to hold in float32: every step reads the
    source one layer at a time (ReferenceModel.forward_streamed), and each tensor's mapped pages
    are let go as soon as it is converted."""

    def __init__(self, checkpoint):
        from ..reference import ReferenceModel

        self.store = checkpoint.tensors
        self.model = ReferenceModel(checkpoint.spec, self, layers=False, head=False)

    def __getitem__(self, name: str) -> np.ndarray:
        values = np.asarray(self.store.get(name), dtype=np.float32)
        self.store.release(name)  # a view of mapped pages stays valid: they are read back on access
        return values

    def __contains__(self, name: object) -> bool:
        return name in self.store

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        values = self.store.take(name, rows)
        self.store.release(name)
        return values

    def new_cache(self):
        return self.model.new_cache()

    def forward(self, ids, cache, *, all_logits: bool = True) -> np.ndarray:
        logits = self.model.forward_streamed(self, ids, cache=cache)
        return logits if all_logits else logits[-1:]

    def decode_batch(self, tokens, caches) -> np.ndarray:
        return self.model.forward_streamed(self, tokens, cache=caches)
