from __future__ import annotations

import numpy as np

from edgekit.spec import FAMILIES

ALL_FAMILIES = sorted(FAMILIES)


def rel_err(ours, theirs) -> float:
    """Largest absolute difference relative to the largest magnitude of the expected values."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())
