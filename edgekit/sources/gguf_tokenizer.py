"""Rebuild a `tokenizers` tokenizer.json from the vocabulary stored in GGUF metadata.

Two vocab kinds exist in llama-family GGUF files:
- "gpt2": byte-level BPE with explicit merges; how text is split before BPE depends on
  `tokenizer.ggml.pre` and is restored from the known pre-tokenizer names;
- "llama": SentencePiece BPE (scores, byte-fallback tokens `<0xNN>`); merges are implied by
  the scores: a merge of two pieces ranks by the score of the piece it makes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from ..errors import SourceError
from ..spec import ModelSpec
from .checkpoint import TokenizerFiles

log = logging.getLogger(__name__)

# llama.cpp token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}
# StarCoder-style vocabularies (SmolLM among them) split every digit before the GPT-2 regex.
_DIGIT_SPLIT = {"smollm", "starcoder", "refact", "codeshell"}
_GPT2 = {None, "default", "gpt2", "gpt-2"}


def _byte_level_pre_tokenizer(pre: str | None) -> Any:
    if pre in _SPLITS:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre not in _GPT2:
        log.warning("GGUF pre-tokenizer '%s' is not known to edgekit; using the GPT-2 split", pre)
    return byte_level


def _add_special_tokens(tok: Tokenizer, tokens: list[str], types: list[int]) -> None:
    added = [
        AddedToken(t, special=ty in (CONTROL, UNKNOWN), normalized=False)
        for t, ty in zip(tokens, types, strict=False)
        if ty in (CONTROL, USER_DEFINED, UNKNOWN)
    ]
    tok.add_special_tokens([a for a in added if a.special])
    tok.add_tokens([a for a in added if not a.special])


def _bos_eos_processor(tok: Tokenizer, bos: str | None, eos: str | None, add_bos: bool, add_eos: bool) -> None:
    if not (add_bos and bos) and not (add_eos and eos):
        return
    single = ([f"{bos}:0"] if add_bos and bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos and eos else [])
    pair = single + ([f"{bos}:1"] if add_bos and bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos and eos else [])
    special = [(t, tok.token_to_id(t)) for t in {bos if add_bos else None, eos if add_eos else None} if t]
    tok.post_processor = processors.TemplateProcessing(
        single=" ".join(single), pair=" ".join(pair), special_tokens=special
    )


def _byte_level_bpe(tokens: list[str], types: list[int], merges: list[str], pre: str | None) -> Tokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _byte_level_pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    _add_special_tokens(tok, tokens, types)
    return tok


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Merges implied by a SentencePiece vocabulary: each split of a piece into two known pieces,
    ranked by the score of the whole piece (higher first), ties by the left then right length."""
    vocab = {t: i for i, t in enumerate(tokens)}
    found: list[tuple[float, int, int, str, str]] = []
    for piece, score, ty in zip(tokens, scores, types, strict=False):
        if ty not in (NORMAL, USER_DEFINED) or len(piece) < 2:
            continue
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        splits.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        found.extend((score, len(left), len(right), left, right) for left, right in splits)
    found.sort(key=lambda m: (m[0], m[1], m[2]), reverse=True)
    return [(m[3], m[4]) for m in found]


def _sentencepiece_bpe(
    tokens: list[str], scores: list[float], types: list[int], unk: str | None, add_space_prefix: bool
) -> Tokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(
        models.BPE(
            vocab=vocab, merges=spm_merges(tokens, scores, types), unk_token=unk, fuse_unk=True, byte_fallback=True
        )
    )
    steps = [normalizers.Prepend("▁")] if add_space_prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    decode = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        decode.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(decode)
    _add_special_tokens(tok, tokens, types)
    return tok


def _get(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def tokenizer_from_gguf(reader: Any, path: Path, spec: ModelSpec) -> TokenizerFiles:
    kind = _get(reader, "tokenizer.ggml.model")
    tokens = _get(reader, "tokenizer.ggml.tokens")
    if not kind or not tokens:
        raise SourceError(f"{path}: the GGUF file has no tokenizer (tokenizer.ggml.*); it cannot be used alone")
    types = _get(reader, "tokenizer.ggml.token_type") or [NORMAL] * len(tokens)

    def token(key: str) -> str | None:
        idx = _get(reader, f"tokenizer.ggml.{key}_token_id")
        return tokens[idx] if idx is not None and 0 <= idx < len(tokens) else None

    bos, eos, unk, pad = token("bos"), token("eos"), token("unknown"), token("padding")
    if kind == "gpt2":
        merges = _get(reader, "tokenizer.ggml.merges")
        if not merges:
            raise SourceError(
                f"{path}: byte-level GGUF vocabulary without tokenizer.ggml.merges; the file is incomplete"
            )
        tok = _byte_level_bpe(tokens, types, merges, _get(reader, "tokenizer.ggml.pre"))
        add_bos = bool(_get(reader, "tokenizer.ggml.add_bos_token", False))
    elif kind == "llama":
        scores = _get(reader, "tokenizer.ggml.scores")
        if not scores:
            raise SourceError(
                f"{path}: SentencePiece GGUF vocabulary without tokenizer.ggml.scores; the file is incomplete"
            )
        tok = _sentencepiece_bpe(
            tokens, scores, types, unk, bool(_get(reader, "tokenizer.ggml.add_space_prefix", True))
        )
        add_bos = bool(_get(reader, "tokenizer.ggml.add_bos_token", True))
    else:
        raise SourceError(f"{path}: GGUF tokenizer model '{kind}' is not supported; supported: gpt2, llama")
    add_eos = bool(_get(reader, "tokenizer.ggml.add_eos_token", False))
    _bos_eos_processor(tok, bos, eos, add_bos, add_eos)

    eos_ids = list(spec.eos_token_ids)
    for key in ("eot", "eom"):
        idx = _get(reader, f"tokenizer.ggml.{key}_token_id")
        if idx is not None and idx not in eos_ids:
            eos_ids.append(int(idx))
    config = {
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": unk,
        "pad_token": pad,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "model_max_length": spec.max_position_embeddings,
    }
    generation = {"bos_token_id": spec.bos_token_id, "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids}
    return TokenizerFiles(
        tok.to_str(),
        {k: v for k, v in config.items() if v is not None},
        _get(reader, "tokenizer.chat_template"),
        generation,
    )
