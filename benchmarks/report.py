"""One shape for every benchmark's figures, so `python -m benchmarks` can print them as one table.

A figure is a median with its spread (min and max of the runs), beside the
baseline measured in the same run, and the target it is held to. Each script
prints its own table and, given `--json PATH`, writes its figures there;
`python -m benchmarks` (benchmarks/__main__.py) runs them all and keeps the
whole run under benchmarks/results/.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    name: str
    unit: str  # "s", "ms", "MiB/s"
    median: float
    low: float
    high: float
    runs: int
    baseline: str = ""
    baseline_median: float | None = None
    target: str = ""  # e.g. "<= 1.1x", "< 2 s"
    met: bool | None = None  # None: no target

    @property
    def ratio(self) -> float | None:
        if not self.baseline_median:
            return None
        return self.median / self.baseline_median


def figure(name: str, unit: str, values: list[float], **kw: object) -> Figure:
    return Figure(name, unit, statistics.median(values), min(values), max(values), len(values), **kw)  # type: ignore[arg-type]


def machine() -> dict[str, object]:
    """What the figures were measured on: they mean little without it."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=False)
    return {
        "host": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "accelerator": os.environ.get("DEVENV_QEMU_ACCEL", "auto"),
        "python_start_ms": round((time.perf_counter() - t0) * 1000, 1),
    }


def save(path: Path, benchmark: str, figures: list[Figure], raw: dict[str, object]) -> None:
    data = {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "figures": [{**asdict(f), "ratio": f.ratio} for f in figures],
        "raw": raw,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "s":
        return f"{value:.1f} s" if value >= 1 else f"{value * 1000:.0f} ms"
    return f"{value:.1f} {unit}"


def row(f: Figure) -> str:
    spread = f"{fmt(f.low, f.unit)}–{fmt(f.high, f.unit)}" if f.runs > 1 else ""
    ratio = f"{f.ratio:.2f}x" if f.ratio is not None else ""
    verdict = "" if f.met is None else ("met" if f.met else "MISSED")
    base = f"{f.baseline} {fmt(f.baseline_median, f.unit)}" if f.baseline else ""
    target = f"{f.target}: {verdict}" if f.target else ""
    return f"| {f.name} | {fmt(f.median, f.unit)} | {spread} | {base} | {ratio} | {target} |"


TABLE_HEAD = "| figure | median | spread (min–max) | baseline, same run | ratio | target |\n|---|---|---|---|---|---|"


def table(figures: list[Figure]) -> str:
    return "\n".join([TABLE_HEAD, *(row(f) for f in figures)])
