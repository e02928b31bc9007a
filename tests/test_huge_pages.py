"""Moving filled heap ranges onto huge pages: only fully resident 2 MiB windows, and the resident
size stays what it was."""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np
import pytest

from edgekit.runtimes.huge_pages import HUGE_PAGE, _runs, collapse_filled_heap, filled_windows

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are Linux's")


def test_runs_of_adjacent_windows():
    h = HUGE_PAGE
    windows = np.array([0, h, 5 * h, 6 * h, 7 * h, 9 * h], dtype=np.int64)
    assert list(_runs(windows)) == [(0, 2), (5 * h, 3), (9 * h, 1)]
    assert list(_runs(np.zeros(0, np.int64))) == []


def _mapping_stats(address: int) -> dict[str, int]:
    """Rss and AnonHugePages (kB) of the mapping that holds `address`."""
    stats: dict[str, int] = {}
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head in ("Rss:", "AnonHugePages:"):
                stats[head[:-1]] = int(line.split()[1])
    return stats


@linux_only
def test_only_filled_windows_are_collapsed_and_resident_size_holds():
    region = mmap.mmap(-1, 9 * HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # what malloc maps
    region.madvise(mmap.MADV_DONTFORK)  # its own flags: the kernel does not merge it with its neighbours
    address = ctypes.addressof(ctypes.c_char.from_buffer(region))
    first = -address % HUGE_PAGE  # the first 2 MiB boundary inside
    page = mmap.PAGESIZE
    for offset in range(first, first + 4 * HUGE_PAGE, page):  # four full windows
        region[offset] = 1
    for offset in range(first + 4 * HUGE_PAGE, first + 8 * HUGE_PAGE, 2 * page):  # four half-filled ones
        region[offset] = 1
    before = _mapping_stats(address)

    collapsed = collapse_filled_heap()

    after = _mapping_stats(address)
    assert after["Rss"] == before["Rss"] == 6 * HUGE_PAGE // 1024
    if collapsed == 0 or after["AnonHugePages"] == 0:
        pytest.skip("this kernel does not collapse ranges into huge pages (MADV_COLLAPSE, Linux 6.1+)")
    assert after["AnonHugePages"] == 4 * HUGE_PAGE // 1024  # the full windows, not the half-filled ones
    assert region[first : first + 4 * HUGE_PAGE : page] == b"\x01" * (4 * HUGE_PAGE // page)  # contents kept


@linux_only
def test_windows_filled_before_are_left_as_they_were():
    """What the application held before the session was built stays on its pages."""

    def filled_region(advice):  # flags of its own: the kernel merges it with no neighbour
        region = mmap.mmap(-1, 3 * HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        region.madvise(advice)
        for offset in range(0, 3 * HUGE_PAGE, mmap.PAGESIZE):
            region[offset] = 1
        return region, ctypes.addressof(ctypes.c_char.from_buffer(region))

    old, old_at = filled_region(mmap.MADV_DONTFORK)
    before = filled_windows()
    new, new_at = filled_region(mmap.MADV_DONTDUMP)
    if collapse_filled_heap(before) == 0 or _mapping_stats(new_at)["AnonHugePages"] == 0:
        pytest.skip("this kernel does not collapse ranges into huge pages (MADV_COLLAPSE, Linux 6.1+)")
    assert _mapping_stats(old_at)["AnonHugePages"] == 0
    assert _mapping_stats(new_at)["AnonHugePages"] >= 2 * HUGE_PAGE // 1024
