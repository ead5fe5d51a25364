"""Report writer: ``report.md`` (tables + linked PNGs), ``metrics.json`` (every number) and the PNGs themselves."""

from __future__ import annotations

import datetime
import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

import torch


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _clean(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


class Report:
    def __init__(self, out_dir: str | Path, title: str, command: str | None = None):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.lines: list[str] = []
        self.metrics: dict[str, Any] = {}
        self.figures: list[str] = []
        self.meta = {
            "command": command or " ".join(["meditok-eval", *sys.argv[1:]]),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
        }

    def text(self, *lines: str) -> None:
        self.lines.extend(lines)
        self.lines.append("")

    def table(self, headers: list[str], rows: list[list[Any]], digits: int = 4) -> None:
        self.lines.append("| " + " | ".join(headers) + " |")
        self.lines.append("|" + "---|" * len(headers))
        for row in rows:
            self.lines.append("| " + " | ".join(fmt(v, digits) for v in row) + " |")
        self.lines.append("")

    def figure(self, name: str, caption: str) -> Path:
        """Register a PNG (write it to the returned path); it is linked in report.md."""
        self.figures.append(name)
        self.lines.append(f"![{caption}]({name})")
        self.lines.append("")
        return self.out / name

    def write(self) -> Path:
        header = [
            f"# {self.title}",
            "",
            f"`{self.meta['command']}` — {self.meta['date']}, Python {self.meta['python']}, torch {self.meta['torch']}",
            "",
        ]
        (self.out / "report.md").write_text("\n".join(header + self.lines).rstrip() + "\n")
        payload = {"meta": self.meta, "metrics": _clean(self.metrics), "figures": self.figures}
        (self.out / "metrics.json").write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
        return self.out / "report.md"
