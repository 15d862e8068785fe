"""What this machine has: memory in bytes (read from the OS, never assumed)."""
from __future__ import annotations

import os

__all__ = ["available_memory", "default_budget", "format_bytes", "parse_bytes", "total_memory"]

BUDGET_FRACTION = 0.6  # of the memory available now (RAM, or free VRAM on CUDA), by default


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


def available_memory() -> int | None:
    """Memory the OS says is available now (MemAvailable), in bytes, or None."""
    return _meminfo().get("MemAvailable")


def default_budget(device: str = "cpu") -> int:
    """The default memory budget: a safe fraction of the RAM available now (4 GiB if unknown); on CUDA
    of the device's free memory (the host side is then bounded by the bands, not the models)."""
    if device.startswith("cuda"):
        try:
            import torch

            free, _ = torch.cuda.mem_get_info(int(device.split(":")[1]) if ":" in device else 0)
            return int(free * BUDGET_FRACTION)
        except Exception:  # noqa: BLE001 - no CUDA after all: the CPU's
            pass
    avail = available_memory()
    return int(avail * BUDGET_FRACTION) if avail else 4 << 30


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}
MIN_BUDGET = 64 << 20


def parse_bytes(text: str) -> int:
    """``6GB``, ``1.5G``, ``512MB``, ``800m`` or a number of bytes -> bytes (powers of 1024).

    ValueError (with the expected form) for anything else, or below 64 MB."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]{0,3})\s*", text or "")
    unit = m[2].lower() if m else ""
    if not m or unit not in _UNITS:
        raise ValueError(f"expected a size like 6GB, 1.5G or 512MB, got {text[:40]!r}")
    value = float(m[1]) * _UNITS[unit]
    if not MIN_BUDGET <= value <= 1 << 50:
        raise ValueError(f"expected a size from 64MB to 1PB, got {text[:40]!r}")
    return int(value)
