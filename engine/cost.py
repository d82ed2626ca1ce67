"""The cost card of a run or an evaluation: wall time per phase (stage), tokens per second, the job's
own peak memory, the device.

The peak is the job process's own: VmHWM of /proc/self/status, the high-water mark of this process
image. `ru_maxrss` is not: it survives execve, so a job that the Streamlit server forked reports the
server's peak (9.9 GB for a 1 GB run).
"""
from __future__ import annotations

import contextlib
import os
import platform
import time
from dataclasses import dataclass, field


def peak_rss_mib() -> float:
    """This process image's peak resident memory, MiB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_name(device) -> str:
    """"NVIDIA H200" / "cpu: 2 cores (AMD EPYC 7B13)", for the card."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"cpu: {cores} cores" + (f" ({cpu})" if cpu else "")


@dataclass
class Cost:
    """Wall time and tokens per part (a phase of a run, a stage of an evaluation)."""

    device: str
    parts: dict[str, dict] = field(default_factory=dict)  # name -> {"wall_s", "tokens"}

    @contextlib.contextmanager
    def part(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            entry = self.parts.setdefault(name, {"wall_s": 0.0, "tokens": 0})
            entry["wall_s"] += time.perf_counter() - t0

    def add_tokens(self, name: str, tokens: int) -> None:
        self.parts.setdefault(name, {"wall_s": 0.0, "tokens": 0})["tokens"] += int(tokens)

    def card(self, cuda_peak_mib: float | None = None) -> dict:
        parts = {n: {"wall_s": round(p["wall_s"], 2), "tokens": p["tokens"] or None,
                     "tokens_per_s": round(p["tokens"] / p["wall_s"], 1) if p["tokens"] and p["wall_s"] > 0 else None}
                 for n, p in self.parts.items()}
        return {"device": self.device, "wall_s": round(sum(p["wall_s"] for p in self.parts.values()), 2),
                "peak_memory_mib": round(peak_rss_mib(), 1), "cuda_peak_mib": cuda_peak_mib, "parts": parts}

    @classmethod
    def resumed(cls, device: str, card: dict | None, keep: list[str]) -> "Cost":
        """A run's cost after --resume: the finished phases' parts as they were recorded."""
        cost = cls(device)
        for name, p in ((card or {}).get("parts") or {}).items():
            if name in keep and isinstance(p, dict) and isinstance(p.get("wall_s"), (int, float)):
                cost.parts[name] = {"wall_s": float(p["wall_s"]), "tokens": int(p.get("tokens") or 0)}
        return cost
