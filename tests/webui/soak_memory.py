"""The soak's memory side (tests/webui/soak.py): which process serves a port, its resident memory
(with its children's), and whether the memory after the last job stayed within the bound.

Linux /proc only; every function takes the /proc root so the tests can hand it a fake tree.

The bound: end RSS ≤ warm-up RSS + max(5 % of the warm-up RSS, 150 MB). After the warm-up every
cache a job fills is full (the model, ControlNet's adapter, the readout's face models, FastFace's
per-pass tables), so what is left is allocator noise: glibc keeps freed memory in per-thread
arenas (the API serves each request on a pool thread, two clients use two) and fragments them
differently as job sizes vary (batch 1–4, hires, previews), which moves RSS by tens of MB up to
~100 MB on a 4 GB CPU server without anything being kept. A real leak of FastFace's own objects
(a UNet clone, recorded maps, a hook per job) is MBs per job and passes the bound within a few
hundred jobs; a slower one shows in the least-squares slope, reported in MB per 100 jobs.
"""
from __future__ import annotations

import os

BOUND_FRACTION = 0.05
BOUND_FLOOR_MB = 150.0
LISTEN = "0A"   # TCP_LISTEN in /proc/net/tcp's `st` column


def listening_inodes(port: int, proc: str = "/proc") -> set[str]:
    """Socket inodes listening on `port` (IPv4 and IPv6, any local address)."""
    inodes = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(os.path.join(proc, "net", name)) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            if len(fields) > 9 and fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _pids(proc: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(proc) if d.isdigit())


def parent_of(pid: int, proc: str = "/proc") -> int | None:
    try:
        with open(os.path.join(proc, str(pid), "stat")) as f:
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'
    return int(stat.rsplit(")", 1)[1].split()[1])


def pid_listening_on(port: int, proc: str = "/proc") -> int | None:
    """The process that holds the listening socket of `port`; where several do (a forked worker
    inherits it), the one whose parent does not."""
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(port, proc)}
    if not wanted:
        return None
    holders = []
    for pid in _pids(proc):
        fd_dir = os.path.join(proc, str(pid), "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:   # gone, or not ours to read
            continue
        for fd in fds:
            try:
                if os.readlink(os.path.join(fd_dir, fd)) in wanted:
                    holders.append(pid)
                    break
            except OSError:
                continue
    top = [pid for pid in holders if parent_of(pid, proc) not in holders]
    return min(top or holders) if holders else None


def descendants(pid: int, proc: str = "/proc") -> list[int]:
    """Children, grandchildren, … of `pid`, in pid order."""
    children: dict[int, list[int]] = {}
    for p in _pids(proc):
        parent = parent_of(p, proc)
        if parent is not None:
            children.setdefault(parent, []).append(p)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return sorted(out)


def status_mb(pid: int, key: str, proc: str = "/proc") -> float | None:
    """A `kB` line of /proc/PID/status (VmRSS, VmHWM) in MB; None once the process is gone."""
    try:
        with open(os.path.join(proc, str(pid), "status")) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def tree_rss_mb(pid: int, proc: str = "/proc") -> float | None:
    """VmRSS of `pid` plus its descendants' (pages they share are counted in each); None if `pid` is gone."""
    own = status_mb(pid, "VmRSS", proc)
    if own is None:
        return None
    return own + sum(status_mb(child, "VmRSS", proc) or 0.0 for child in descendants(pid, proc))


def rss_bound_mb(warm_mb: float) -> float:
    return max(BOUND_FRACTION * warm_mb, BOUND_FLOOR_MB)


def rss_within_bound(warm_mb: float, end_mb: float) -> bool:
    """Growth from the warm-up to the end within the bound (shrinking is always fine)."""
    return end_mb - warm_mb <= rss_bound_mb(warm_mb)


def slope_mb_per_100_jobs(samples: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of (jobs done, RSS MB), × 100; None with fewer than two distinct x."""
    if len({x for x, _ in samples}) < 2:
        return None
    n = len(samples)
    mx = sum(x for x, _ in samples) / n
    my = sum(y for _, y in samples) / n
    sxx = sum((x - mx) ** 2 for x, _ in samples)
    sxy = sum((x - mx) * (y - my) for x, y in samples)
    return 100.0 * sxy / sxx
