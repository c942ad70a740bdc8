"""Memory given back after a burst of connections.

Each connection's buffers (a 64 KB read, a 32 KiB Maildir buffer) are freed when it
closes, but glibc's allocator keeps freed memory for later unless it lies at the very top
of its heap: after 200 clients sent a megabyte each and left, the process stayed 23 MB
bigger. ``malloc_trim(0)`` returns the free pages in the middle of the heaps too. Every
``INTERVAL`` seconds it trims, in a worker thread, if the process has grown by
``GROWTH`` since the last trim (a burst came, whether or not it is over), or if
connections have gone since the last trim and the process is ``GROWTH`` above the
smallest it has been (a burst that was under way at the last trim is over). So it trims
once per burst, not on every look. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable

import trio

from .. import Server

__all__ = ["give_back_memory"]

INTERVAL = 5.0
GROWTH = 8 * 2**20


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


def _rss() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def give_back_memory(server: Server) -> None:
    """Run beside the server: trim the heap after bursts of connections."""
    trim = _malloc_trim()
    if trim is None:
        return
    trimmed_at = floor = _rss()
    trimmed_with = server.connections
    while True:
        await trio.sleep(INTERVAL)
        rss, count = _rss(), server.connections
        if rss > trimmed_at + GROWTH or (count < trimmed_with and rss > floor + GROWTH):
            await trio.to_thread.run_sync(trim, 0)
            trimmed_at, trimmed_with = _rss(), count
            floor = min(floor, trimmed_at)
