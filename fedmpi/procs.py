"""Processes on this host, told apart from a later process that reuses their pid.

Linux /proc: a pid plus its kernel start time names one process for good;
elsewhere only the pid is known (start time None) and `alive` trusts it.
"""
from __future__ import annotations

import os
from pathlib import Path


def proc_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def alive(pid: int, start: str | None) -> bool:
    """Is the process recorded as (pid, start) still running?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    now = proc_start(pid)
    return start is None or now is None or now == start


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[tuple[int, str | None]]:
    """(pid, start) of every process below `pid` (empty where there is no /proc)."""
    tree, out, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.add((child, proc_start(child)))
            todo.append(child)
    return out
