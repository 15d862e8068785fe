"""What this machine has: memory in bytes (read from the OS, never assumed)."""
from __future__ import annotations

import os

__all__ = ["format_bytes", "total_memory"]


def _meminfo() -> dict[str, int]:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            rows = [line.split() for line in fh]
    except OSError:
        return {}
    return {r[0].rstrip(":"): int(r[1]) * 1024 for r in rows if len(r) >= 2 and r[1].isdigit()}


def total_memory() -> int | None:
    """RAM plus swap in bytes, or None when the OS does not say."""
    info = _meminfo()
    if "MemTotal" in info:
        return info["MemTotal"] + info.get("SwapTotal", 0)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """``1.5 GB``-style size (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""
