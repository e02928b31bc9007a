"""Moving filled heap ranges onto huge pages: only fully resident 2 MiB windows, and the resident
size stays what it was."""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np
import pytest

from edgekit.runtimes.huge_pages import HUGE_PAGE, _filled_runs, collapse_filled_heap

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are Linux's")


def test_filled_runs_are_runs_of_fully_resident_windows():
    resident = np.array([1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 1, 1, 0], dtype=np.uint8)
    assert list(_filled_runs(resident, 4)) == [(0, 1), (2, 2)]
    assert list(_filled_runs(np.zeros(8, dtype=np.uint8), 4)) == []
    assert list(_filled_runs(np.ones(8, dtype=np.uint8), 4)) == [(0, 2)]


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
