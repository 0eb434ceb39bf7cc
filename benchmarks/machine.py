"""The machine the benchmarks share with other work: CPU accounting and waiting for quiet."""

from __future__ import annotations

import time

import psutil


def process_tree(pids: list[int]) -> list[psutil.Process]:
    """The processes ``pids`` and all their descendants (servers fork workers)."""
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return procs


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """User + system CPU seconds consumed so far by ``procs`` (vanished ones count 0)."""
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def busy_cores(interval: float) -> float:
    """Cores' worth of CPU in use, machine-wide, over the next ``interval`` seconds."""
    return psutil.cpu_percent(interval=interval) / 100.0 * (psutil.cpu_count() or 1)


def wait_for_quiet(max_wait: float, level: float) -> float:
    """Wait (at most ``max_wait`` s) until the machine uses at most ``level`` cores.

    Other sessions' test suites share these cores; starting a measurement in the middle of one
    only measures them. Returns the seconds waited.
    """
    started = time.monotonic()
    while time.monotonic() - started < max_wait:
        if busy_cores(0.5) <= level:
            break
    return time.monotonic() - started
