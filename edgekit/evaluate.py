"""Quality of a model on a text: perplexity over windows, and against a reference model the
KL divergence of the next-token distributions and how often their top-1 tokens agree."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

LogitsFn = Callable[[list[int]], np.ndarray]  # token ids -> logits [T, vocab]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass
class Quality:
    perplexity: float
    tokens: int
    kl: float | None = None  # mean KL(reference || model) per token, nats
    top1: float | None = None  # fraction of positions where the argmax agrees with the reference

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(windows: Sequence[list[int]], model: LogitsFn, reference: LogitsFn | None = None) -> Quality:
    nll, count, kl_sum, agree = 0.0, 0, 0.0, 0
    for ids in windows:
        lp = log_softmax(model(ids).astype(np.float64))[:-1]
        targets = np.asarray(ids[1:])
        nll -= float(lp[np.arange(len(targets)), targets].sum())
        count += len(targets)
        if reference is not None:
            ref = log_softmax(reference(ids).astype(np.float64))[:-1]
            kl_sum += float((np.exp(ref) * (ref - lp)).sum())
            agree += int((ref.argmax(-1) == lp.argmax(-1)).sum())
    return Quality(
        perplexity=float(np.exp(nll / max(count, 1))),
        tokens=count,
        kl=kl_sum / count if reference is not None else None,
        top1=agree / count if reference is not None else None,
    )
