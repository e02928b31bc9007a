"""Move the process's filled heap onto huge pages (Linux transparent huge pages, 2 MiB on x86-64).

A decode step reads every weight once. ONNX Runtime keeps its repacked weights in memory from
malloc, which Linux backs with 4 KiB pages unless a range was advised before it was touched, so
the step walks the page tables every 4 KiB of weights. MADV_COLLAPSE (Linux 6.1+) rebuilds ranges
that are already filled as huge pages in place. Only huge-page windows whose every page is resident
are collapsed, so the resident size does not grow; elsewhere (another OS, an older kernel, THP turned
off) nothing happens.
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


def collapse_filled_heap() -> int:
    """Collapse every fully resident huge-page window of the anonymous read-write mappings; returns
    the bytes now on huge pages (0 where the system cannot)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise, mincore = libc.madvise, libc.mincore
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    page = os.sysconf("SC_PAGE_SIZE")
    per_window = HUGE_PAGE // page
    collapsed = 0
    for start, end in _anonymous_mappings():
        low, high = -(-start // HUGE_PAGE) * HUGE_PAGE, end // HUGE_PAGE * HUGE_PAGE
        if high - low < HUGE_PAGE:
            continue
        pages = (ctypes.c_ubyte * ((high - low) // page))()
        if mincore(low, high - low, pages) != 0:
            continue
        for first, count in _filled_runs(np.frombuffer(pages, dtype=np.uint8), per_window):
            size = count * HUGE_PAGE
            if madvise(low + first * HUGE_PAGE, size, MADV_COLLAPSE) == 0:
                collapsed += size
            elif ctypes.get_errno() == 22:  # EINVAL: this kernel has no MADV_COLLAPSE
                return collapsed
    return collapsed


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


def _filled_runs(resident: np.ndarray, per_window: int) -> Iterator[tuple[int, int]]:
    """(first window, windows) of each run of windows whose pages are all resident."""
    full = (resident & 1).reshape(-1, per_window).all(axis=1)
    edges = np.flatnonzero(np.diff(np.concatenate([[False], full, [False]]).astype(np.int8)))
    for first, stop in zip(edges[::2], edges[1::2], strict=True):
        yield int(first), int(stop - first)
