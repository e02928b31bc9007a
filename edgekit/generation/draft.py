"""A draft model for speculative decoding: the checks that it can propose for a target (the same
tokenizer and vocabulary) and what one of its steps costs against one of the target's."""

from __future__ import annotations

from pathlib import Path

from ..errors import EdgekitError
from .loader import Loaded

# one line the check's errors end with
MAKE_ONE = "a draft shares the target's tokenizer: make one with `edgekit distill SOURCE --draft TARGET -o DRAFT`"


def check_draft(target: Loaded, draft: Loaded, target_path: str | Path, draft_path: str | Path) -> None:
    """An error naming the difference when `draft` cannot propose tokens for `target`."""
    where = f"draft {draft_path} does not fit target {target_path}"
    if draft.vocab_size != target.vocab_size:
        raise EdgekitError(
            f"{where}: its vocabulary has {draft.vocab_size} tokens, the target's {target.vocab_size}; {MAKE_ONE}"
        )
    ours, theirs = target.tokenizer.backend.get_vocab(), draft.tokenizer.backend.get_vocab()
    if ours != theirs:
        differ = sorted(set(ours.items()) ^ set(theirs.items()), key=lambda item: item[1])
        token, index = differ[0]
        raise EdgekitError(
            f"{where}: another tokenizer ({len(differ)} token/id pairs differ, e.g. {token!r} -> {index}); {MAKE_ONE}"
        )


def draft_cost(target: Loaded, draft: Loaded) -> float:
    """One draft step in target decode steps: decoding reads every weight once per token, so the
    ratio of the weight bytes the two read (the whole-model parameter count when a manifest does
    not say)."""

    def size(loaded: Loaded) -> float:
        manifest = loaded.manifest
        if manifest is not None and manifest.quantization.weight_bytes:
            return float(manifest.quantization.weight_bytes)
        spec = loaded.spec
        if spec is None:
            return 1.0
        per_layer = spec.hidden_size * (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim
        per_layer += spec.num_heads * spec.head_dim * spec.hidden_size + 3 * spec.hidden_size * spec.intermediate_size
        return float(spec.num_layers * per_layer + spec.vocab_size * spec.hidden_size)

    return size(draft) / size(target)
