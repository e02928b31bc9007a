from __future__ import annotations

import threading
import time

import numpy as np

from edgekit.spec import FAMILIES

ALL_FAMILIES = sorted(FAMILIES)


def rel_err(ours, theirs) -> float:
    """Largest absolute difference relative to the largest magnitude of the expected values."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def start_seated(batcher, threads, seats: int, monkeypatch, timeout: float = 30.0) -> None:
    """Start the threads with the batcher's first decode run held until `seats` sequences are in
    flight, so concurrent requests share runs on any host, however slow its clients start."""
    seated = threading.Event()
    run = batcher.runtime.decode

    def decode(tokens):
        seated.wait(timeout)
        return run(tokens)

    monkeypatch.setattr(batcher.runtime, "decode", decode)
    for t in threads:
        t.start()
    end = time.monotonic() + timeout
    while batcher.running < seats:
        assert time.monotonic() < end, f"{batcher.running} of {seats} sequences seated"
        time.sleep(0.005)
    seated.set()
