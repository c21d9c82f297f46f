"""Row arrays that grow without a copy: views of one big reservation of address space.

:func:`reserve_rows` maps far more rows than will be needed with ``MAP_NORESERVE``: it is
address space only, and the kernel hands out memory page by page as rows are first written. A
table grows by taking a longer view of the same mapping (no copy, no fill), where growing a numpy
array means allocating a new one and copying every row on the push that needs the room.

Like numpy for its big arrays, the mapping asks for transparent huge pages (``MADV_HUGEPAGE``):
random row reads and writes then miss the TLB far less (with 4 KiB pages the in-process push and
pull rates at 1M rows came out ~10-30 % lower, on a noisy host). The price is at first write: each 2 MiB page is
zeroed, sometimes after compacting memory (~10 ms apiece on a busy host), so the table writes
rows ahead of use to spread these faults over pushes (``EmbeddingTable._write_ahead``).

>>> rows = reserve_rows(1 << 30, np.float32, 16)  # 64 GiB of address space, no memory
>>> rows is None or (rows.shape == (1 << 30, 16) and float(rows[12345].sum()) == 0.0)
True
"""

from __future__ import annotations

import mmap
import platform
import sys

import numpy as np

__all__ = ["reserve_rows", "HUGE_PAGES"]

HUGE_PAGES = True  # ask for transparent huge pages on reservations, as numpy does for big arrays
# mmap.MAP_NORESERVE appears in Python 3.12; before, its value in the asm-generic Linux ABI.
_LINUX_MAP_NORESERVE = dict.fromkeys(("x86_64", "aarch64", "arm64", "riscv64", "s390x"), 0x4000)


def reserve_rows(rows: int, dtype: type, width: int | None = None) -> np.ndarray | None:
    """A zeroed array of ``rows`` rows (of ``width`` items, or scalars) on a ``MAP_NORESERVE``
    mapping, or None where that is refused (not Linux, ``vm.overcommit_memory = 2``, ``ulimit -v``).

    Views of the array stay valid as long as any of them lives (they keep the mapping).
    """
    shape = (rows,) if width is None else (rows, width)
    itemsize = np.dtype(dtype).itemsize * (1 if width is None else width)
    if itemsize == 0:
        return np.zeros(shape, dtype=dtype)
    noreserve = getattr(mmap, "MAP_NORESERVE", None) or _LINUX_MAP_NORESERVE.get(platform.machine())
    if noreserve is None or not sys.platform.startswith("linux"):
        return None
    try:
        buffer = mmap.mmap(-1, rows * itemsize, flags=mmap.MAP_PRIVATE | noreserve)
    except (OSError, ValueError, OverflowError):
        return None
    if HUGE_PAGES and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buffer.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)
