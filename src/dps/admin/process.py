"""What a module process is using: the manual's investigation endpoints on every module.

Runbook E.1 step 4 (``/admin/resources/status``), E.3 step 1 (``/admin/memory/status``) and H.1
step 1 (``/admin/threads/status``, ``/admin/resources/io``) ask any module what it is using. The
answers come from ``/proc/self`` (Linux), the interpreter's threads and the garbage collector:
cheap reads, no sampling thread.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

_PROC = Path("/proc/self")
_STARTED = time.time()


def _status_fields() -> dict[str, int]:
    """``VmRSS``, ``VmHWM``, ``Threads`` ... from /proc/self/status, in kB or counts."""
    fields: dict[str, int] = {}
    try:
        for line in (_PROC / "status").read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[name] = int(parts[0])
    except OSError:
        pass
    return fields


def io_status() -> dict[str, Any]:
    """Bytes this process read and wrote (``/proc/self/io``) and its file descriptors."""
    counters: dict[str, int] = {}
    try:
        for line in (_PROC / "io").read_text().splitlines():
            name, _, value = line.partition(":")
            counters[name.strip()] = int(value)
    except OSError:
        pass
    try:
        open_fds = len(os.listdir(_PROC / "fd"))
    except OSError:
        open_fds = -1
    return {
        "read_bytes": counters.get("read_bytes"),
        "write_bytes": counters.get("write_bytes"),
        "read_calls": counters.get("syscr"),
        "write_calls": counters.get("syscw"),
        "open_file_descriptors": open_fds,
    }


def memory_status() -> dict[str, Any]:
    """Resident memory now and at its peak, and the garbage collector's generations."""
    status = _status_fields()
    return {
        "rss_mb": round(status.get("VmRSS", 0) / 1024, 1),
        "peak_rss_mb": round(status.get("VmHWM", 0) / 1024, 1),
        "virtual_mb": round(status.get("VmSize", 0) / 1024, 1),
        "gc_counts": list(gc.get_count()),
        "gc_collections": [s["collections"] for s in gc.get_stats()],
    }


def threads_status() -> dict[str, Any]:
    """The process's threads: each thread's name, whether it is a daemon and alive."""
    threads = threading.enumerate()
    return {
        "count": len(threads),
        "threads": [
            {"name": t.name, "daemon": t.daemon, "alive": t.is_alive(), "ident": t.ident}
            for t in threads
        ],
    }


def resources_status() -> dict[str, Any]:
    """CPU time, memory, I/O and threads of this process in one answer."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    uptime = max(time.time() - _STARTED, 1e-9)
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "uptime_seconds": round(uptime, 1),
        "cpu_seconds": {"user": round(usage.ru_utime, 3), "system": round(usage.ru_stime, 3)},
        "cpu_utilization": round(cpu / uptime, 4),
        "load_average": list(os.getloadavg()),
        "cores": os.cpu_count(),
        "memory": memory_status(),
        "io": io_status(),
        "threads": threading.active_count(),
    }
