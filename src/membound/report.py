"""RunReport: what a pipeline run moved, how it batched, and where the memory went."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from membound.budget import format_size

__all__ = ["RunReport"]

# How many (seconds, rss) points a report keeps for its timeline: enough to draw, small to save.
TIMELINE_POINTS = 200


@dataclass
class RunReport:
    """The record of one pipeline run (``copy``, ``demo``...). Sizes are bytes.

    ``peak_above_start`` is the process's peak resident memory during the run minus its
    resident memory when the run started: the number a budget bounds. ``within_budget`` says
    whether it stayed at or under ``budget``.
    """

    source: str
    target: str
    budget: int
    rows: int = 0
    bytes: int = 0
    batches: int = 0
    batch_rows: list[int] = field(default_factory=list, repr=False)
    batch_bytes: list[int] = field(default_factory=list, repr=False)
    start_rss: int = 0
    peak_rss: int = 0
    end_rss: int = 0
    exact_peak: bool = True
    seconds: float = 0.0
    mode: str = ""
    notes: list[str] = field(default_factory=list)
    timeline: list[tuple[float, int]] = field(default_factory=list, repr=False)

    @property
    def peak_above_start(self) -> int:
        return max(0, self.peak_rss - self.start_rss)

    @property
    def within_budget(self) -> bool:
        return self.peak_above_start <= self.budget

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def add_batch(self, rows: int, nbytes: int) -> None:
        self.rows += rows
        self.bytes += nbytes
        self.batches += 1
        self.batch_rows.append(rows)
        self.batch_bytes.append(nbytes)

    @staticmethod
    def _spread(values: list[int]) -> dict[str, float]:
        if not values:
            return {"min": 0, "median": 0, "max": 0}
        return {
            "min": min(values),
            "median": statistics.median(values),
            "max": max(values),
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (per-batch lists are summarised as min/median/max)."""
        data = asdict(self)
        del data["batch_rows"], data["batch_bytes"]
        data["timeline"] = [list(point) for point in self.timeline[:: max(
            1, len(self.timeline) // TIMELINE_POINTS)]]
        data.update(
            batch_rows_spread=self._spread(self.batch_rows),
            batch_bytes_spread=self._spread(self.batch_bytes),
            peak_above_start=self.peak_above_start,
            within_budget=self.within_budget,
            rows_per_second=round(self.rows_per_second, 1),
            bytes_per_second=round(self.bytes_per_second, 1),
        )
        return data

    def to_json(self, path: str | Path | None = None) -> str:
        """The report as JSON; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def lines(self) -> list[tuple[str, str]]:
        """The report as (label, value) pairs, for text and rich tables alike."""
        rows_spread = self._spread(self.batch_rows)
        bytes_spread = self._spread(self.batch_bytes)
        verdict = "within budget" if self.within_budget else "OVER BUDGET"
        peak_note = "" if self.exact_peak else " (sampled)"
        out = [
            ("source", self.source),
            ("target", self.target),
            ("rows", f"{self.rows:,}"),
            ("data", f"{format_size(self.bytes)} (Arrow)"),
            ("batches", f"{self.batches:,}"),
            (
                "batch rows",
                f"min {rows_spread['min']:,.0f} / median {rows_spread['median']:,.0f} / "
                f"max {rows_spread['max']:,.0f}",
            ),
            (
                "batch size",
                f"min {format_size(bytes_spread['min'])} / median "
                f"{format_size(bytes_spread['median'])} / max {format_size(bytes_spread['max'])}",
            ),
            (
                "peak memory",
                f"{format_size(self.peak_above_start)} above start of "
                f"{format_size(self.budget)} budget: {verdict}{peak_note}",
            ),
            ("process RSS", f"start {format_size(self.start_rss)}, peak "
                            f"{format_size(self.peak_rss)}, end {format_size(self.end_rss)}"),
            ("time", f"{self.seconds:.2f} s, {self.rows_per_second:,.0f} rows/s, "
                     f"{format_size(self.bytes_per_second)}/s"),
        ]
        out.extend(("note", note) for note in self.notes)
        return out

    def __str__(self) -> str:
        width = max(len(label) for label, _ in self.lines())
        return "\n".join(f"{label:>{width}}  {value}" for label, value in self.lines())

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title="membound run report", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for label, value in self.lines():
            style = "red" if "OVER BUDGET" in value else None
            table.add_row(label, value, style=style)
        return table
