"""How many CPUs this process may keep busy, which is what sizes ONNX Runtime's thread pool.

ONNX Runtime's default intra-op pool has one thread per physical core of the *host*. In a
container with a CPU limit (Kubernetes `resources.limits.cpu`, `docker run --cpus`) the limit
is a cgroup quota that core detection does not see (microsoft/onnxruntime#29510), so a pod
limited to 2 CPUs on a 32-core node gets a pool of 16 or more threads. They spin through each
forward (onnx_runner.py), use up the quota early in every scheduling period, and the kernel then
stops the whole pod for the rest of it. `available_cpus` reads what the process may actually
use: its affinity mask (`taskset`, `docker --cpuset-cpus`), bounded by its cgroup's CPU quota
(v2 `cpu.max`, v1 `cpu.cfs_quota_us` over `cpu.cfs_period_us`), rounded up.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """The CPUs this process may keep busy: its affinity, bounded by its cgroup's CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    return max(1, min(cpus, math.ceil(quota))) if quota is not None else cpus


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (1.5: one and a half), or None where there
    is none (no limit, no cgroup file system, not Linux)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:  # not a line the kernel writes
            continue
        _, controllers, path = fields
        v2 = controllers == ""  # one unified hierarchy: "0::/path"; v1: "4:cpu,cpuacct:/path"
        if not v2 and "cpu" not in controllers.split(","):
            continue
        mounts = [cgroup_root] if v2 else [cgroup_root / controllers, cgroup_root / "cpu"]
        # Inside a container's cgroup namespace the path is "/" and the mount is its own cgroup.
        for directory in dict.fromkeys(d for mount in mounts for d in (mount / path.lstrip("/"), mount)):
            quota = _quota(directory, v2)
            if quota is not None:
                return quota
    return None


def _quota(directory: Path, v2: bool) -> float | None:
    """A cgroup directory's quota in CPUs: v2 `cpu.max` ("max 100000" or "200000 100000"), v1
    `cpu.cfs_quota_us` (-1: none) over `cpu.cfs_period_us`; None where it sets none."""
    try:
        if v2:
            quota, period = (directory / "cpu.max").read_text().split()
        else:
            quota = (directory / "cpu.cfs_quota_us").read_text().strip()
            period = (directory / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1") or int(period) <= 0:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):  # absent, or not what the kernel writes
        return None
