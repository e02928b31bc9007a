"""What every engine in the benchmark provides, and the pieces they share.

An engine makes its own artifact from a source model (`export`, timed and measured for peak
memory in a child process of its own) and opens it as a `Session` that runs token ids to logits.
The suite drives every session the same way: prefill a prompt, decode greedily, score a text.
"""

from __future__ import annotations

import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Source:
    """A model to benchmark. `gguf` is set for the real model (its file as shipped); `hf` is an HF
    folder of the same weights (float) that every converter reads; `calibration` a text file for
    the engines that calibrate (none of it in the evaluation text)."""

    name: str
    hf: Path
    gguf: Path | None = None
    real: bool = True  # False: random weights (speed and memory only; perplexity means nothing)
    calibration: Path | None = None
    gguf_pre: str = ""  # llama.cpp's name of the tokenizer's pre-tokenizer, where `gguf` is not set


class Session(Protocol):
    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Run the prompt from an empty cache; logits of its last position."""

    def decode(self, token: int) -> np.ndarray:
        """One token more; its logits."""

    def logits_all(self, ids: Sequence[int]) -> np.ndarray:
        """Logits of every position of `ids`, from an empty cache: [len(ids), vocab]."""


class Engine(Protocol):
    name: str
    venv: str  # "main" or "optimum": which virtualenv its child processes run in

    def version(self) -> str:
        """The engine's version; raises ImportError when it is not installed."""

    def variants(self, source: Source) -> list[str]:
        """The artifacts this engine makes of `source` (the first is the one speed is measured on)."""

    def export(self, source: Source, variant: str, out: Path) -> None:
        """Write the artifact for `variant` to `out` (a folder, created by the engine)."""

    def speed_variants(self, source: Source) -> list[str]:
        """The variants whose speed is measured (each costs a minute or more)."""

    def open(self, artifact: Path, threads: int, context: int, all_logits: bool = False) -> Session:
        """all_logits: the session is used for logits_all (engines that must ask for it up front)."""

    def model_files(self, artifact: Path) -> list[Path]:
        """The artifact's weight and graph files (what its size and bits per weight count)."""


class CausalLMSession:
    """A session over a model called the way transformers calls a causal LM (input ids, attention
    mask, past key values in; logits and new past out): transformers' own models and optimum's
    ORTModelForCausalLM alike."""

    def __init__(self, model, torch):
        self.model, self.torch = model, torch

    def _run(self, ids: Sequence[int], past=None) -> np.ndarray:
        length = len(ids) + (self.length if past is not None else 0)
        mask = self.torch.ones((1, length), dtype=self.torch.int64)
        with self.torch.no_grad():
            out = self.model(
                input_ids=self.torch.tensor([list(ids)]), attention_mask=mask, past_key_values=past, use_cache=True
            )
        self.past, self.length = out.past_key_values, length
        return out.logits[0].float().numpy()

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        return self._run(ids)[-1]

    def decode(self, token: int) -> np.ndarray:
        return self._run([token], self.past)[-1]

    def logits_all(self, ids: Sequence[int]) -> np.ndarray:
        return self._run(ids)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def huge_pages_mb() -> float:
    """This process's anonymous memory on transparent huge pages (Linux), MB."""
    try:
        lines = Path("/proc/self/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith("AnonHugePages:")), 0.0)


def source_from_json(info: dict) -> Source:
    path = lambda key: Path(info[key]) if info.get(key) else None  # noqa: E731
    return Source(
        info["name"], Path(info["hf"]), path("gguf"), info["real"], path("calibration"), info.get("gguf_pre", "")
    )
