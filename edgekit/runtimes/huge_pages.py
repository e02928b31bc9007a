"""Move the process's filled heap onto huge pages (Linux transparent huge pages, 2 MiB on x86-64).

A decode step reads every weight once. ONNX Runtime keeps its repacked weights in memory from
malloc, which Linux backs with 4 KiB pages unless a range was advised before it was touched, so
the step walks the page tables every 4 KiB of weights. MADV_COLLAPSE (Linux 6.1+) rebuilds ranges
that are already filled as huge pages in place. Only huge-page windows whose every page is resident
are collapsed, so the resident size does not grow, and the runtime passes what was filled before
the session was built, so an application's own heap stays as it was. Elsewhere (another OS, an
older kernel, THP turned off) nothing happens.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

MADV_COLLAPSE = 25


def _huge_page_size() -> int:
    """The kernel's transparent huge page: 2 MiB with 4 KiB pages, 32 MiB with 16 KiB (Raspberry Pi 5)."""
    try:
        return int(Path("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size").read_text())
    except (OSError, ValueError):
        return 2 << 20


HUGE_PAGE = _huge_page_size()
_MAPPING = re.compile(r"([0-9a-f]+)-([0-9a-f]+) rw\S* \S+ \S+ 0\s*(\[heap\])?$")


def filled_windows() -> np.ndarray:
    """Start addresses of the huge-page windows of the anonymous read-write mappings whose every page
    is resident (empty where the system cannot tell)."""
    libc = _libc()
    if libc is None:
        return np.zeros(0, np.int64)
    _, mincore = libc
    page = os.sysconf("SC_PAGE_SIZE")
    found = []
    for start, end in _anonymous_mappings():
        low, high = -(-start // HUGE_PAGE) * HUGE_PAGE, end // HUGE_PAGE * HUGE_PAGE
        if high - low < HUGE_PAGE:
            continue
        pages = (ctypes.c_ubyte * ((high - low) // page))()
        if mincore(low, high - low, pages) != 0:
            continue
        full = (np.frombuffer(pages, dtype=np.uint8) & 1).reshape(-1, HUGE_PAGE // page).all(axis=1)
        found.append(low + np.flatnonzero(full).astype(np.int64) * HUGE_PAGE)
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def collapse_filled_heap(already: np.ndarray | None = None) -> int:
    """Collapse the fully resident windows, except those in `already` (filled_windows() taken
    before the allocations to move: an application's own heap is left as it was); returns the bytes
    now on huge pages (0 where the system cannot)."""
    libc = _libc()
    if libc is None:
        return 0
    madvise, _ = libc
    windows = filled_windows()
    if already is not None:
        windows = np.setdiff1d(windows, already)
    collapsed = 0
    for first, count in _runs(windows):
        if madvise(first, count * HUGE_PAGE, MADV_COLLAPSE) == 0:
            collapsed += count * HUGE_PAGE
        elif ctypes.get_errno() == 22:  # EINVAL: this kernel has no MADV_COLLAPSE
            break
    return collapsed


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise, mincore = libc.madvise, libc.mincore
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return madvise, mincore


def _anonymous_mappings() -> Iterator[tuple[int, int]]:
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return
    for line in lines:
        match = _MAPPING.match(line)
        if match:
            yield int(match[1], 16), int(match[2], 16)


def _runs(windows: np.ndarray) -> Iterator[tuple[int, int]]:
    """(first address, windows) of each run of adjacent windows in a sorted array of window starts."""
    if not len(windows):
        return
    breaks = np.flatnonzero(np.diff(windows) != HUGE_PAGE) + 1
    for run in np.split(windows, breaks):
        yield int(run[0]), len(run)
