from __future__ import annotations

import numpy as np

from edgekit.spec import FAMILIES

ALL_FAMILIES = sorted(FAMILIES)


def rel_err(ours, theirs) -> float:
    """Largest absolute difference relative to the largest magnitude of the expected values."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


# family (first word) and config overrides: every family and every rope variant the exporters build
FAMILY_CASES = {
    "llama": {},
    "mistral-sliding-window": {"sliding_window": 12},
    "qwen2": {},
    "qwen3": {},
    "phi3-partial-rotary": {"partial_rotary_factor": 0.5, "hidden_size": 128},
    "llama-tied-llama3-rope": {
        "tie_word_embeddings": True,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64},
    },
    "qwen2-yarn": {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}},
}
