"""What this process may use: CPUs (affinity, cgroup quota), memory (/proc/meminfo, cgroup
limit) and BLAS threads (:func:`limit_blas_threads`).

A batch job is given a share of a node: SLURM sets the CPU affinity (``--cpus-per-task``) and,
with cgroup constraints, a CPU quota and a memory limit.  The node's core count and total memory
say nothing about that share.  Only the standard library is used; every reader returns None
where the information is missing (not Linux, no cgroup, no limit).
"""
import contextlib
import math
import os

PROC_CGROUP = "/proc/self/cgroup"
CGROUP_ROOT = "/sys/fs/cgroup"
MEMINFO = "/proc/meminfo"


def _read(path):
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_folders(controller, proc_cgroup=PROC_CGROUP, root=CGROUP_ROOT):
    """Folders of this process's cgroup and of its parents, for ``controller`` ('cpu' or
    'memory'): [(version, folder), ...], innermost first (v2 and v1 hierarchies both)."""
    text = _read(proc_cgroup) or ""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            version, bases = 2, [root]
        elif controller in controllers.split(","):
            version = 1
            bases = [os.path.join(root, name) for name in (controllers, controller, "cpu,cpuacct")]
        else:
            continue
        for base in dict.fromkeys(bases):
            if not os.path.isdir(base):
                continue
            folder = os.path.normpath(os.path.join(base, path.lstrip("/")))
            while True:
                out.append((version, folder))
                if folder == base or not folder.startswith(base):
                    break
                folder = os.path.dirname(folder)
    return out


def cgroup_cpu_limit(proc_cgroup=PROC_CGROUP, root=CGROUP_ROOT):
    """CPUs allowed by the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``), rounded up, the smallest along the cgroup's path; None if none."""
    limits = []
    for version, folder in _cgroup_folders("cpu", proc_cgroup, root):
        if version == 2:
            fields = (_read(os.path.join(folder, "cpu.max")) or "").split()
        else:
            fields = [_read(os.path.join(folder, name)) for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us")]
        try:
            quota, period = (float(v) for v in fields[:2])
        except (TypeError, ValueError):          # missing, or "max": no quota
            continue
        if quota > 0 and period > 0:
            limits.append(max(1, math.ceil(quota / period)))
    return min(limits) if limits else None


def usable_cpus():
    """CPUs this process may use: its affinity, capped by its cgroup CPU quota (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):            # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return max(1, min(cpus, quota) if quota else cpus)


def available_memory(meminfo=MEMINFO, proc_cgroup=PROC_CGROUP, root=CGROUP_ROOT):
    """Bytes this process can still allocate: MemAvailable of /proc/meminfo, capped by the
    room left under each cgroup memory limit (v2 ``memory.max`` - ``memory.current``, v1
    ``memory.limit_in_bytes`` - ``memory.usage_in_bytes``); None if unknown."""
    room = []
    for line in (_read(meminfo) or "").splitlines():
        if line.startswith("MemAvailable:"):
            room.append(int(line.split()[1]) * 1024)
    for version, folder in _cgroup_folders("memory", proc_cgroup, root):
        names = ("memory.max", "memory.current") if version == 2 else \
            ("memory.limit_in_bytes", "memory.usage_in_bytes")
        limit, used = (_read(os.path.join(folder, name)) for name in names)
        try:
            limit, used = int(limit), int(used or 0)
        except (TypeError, ValueError):          # missing, or "max": no limit
            continue
        if limit < 1 << 60:                      # v1 writes "no limit" as a huge number
            room.append(max(0, limit - used))
    return min(room) if room else None


# The toolbox's few matrix products are tiny, so BLAS threads only add overhead (with OpenBLAS's
# default threads, the numpy engine that preceded the compiled one took 18.4 s instead of
# 12.0 s on a 10^5-voxel fit, 2 cores), and worker processes each running threads fight over
# the cores.  BLAS reads these when numpy loads.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_blas_threads():
    """One BLAS thread in this process (a value the user set wins): the scripts call it first
    thing, before numpy is imported.  Importing the package changes nothing."""
    for var in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(var, "1")


@contextlib.contextmanager
def blas_threads_limited():
    """:func:`limit_blas_threads` within the block only: for the worker processes started there."""
    added = [var for var in BLAS_THREAD_VARIABLES if var not in os.environ]
    limit_blas_threads()
    try:
        yield
    finally:
        for var in added:
            os.environ.pop(var, None)
