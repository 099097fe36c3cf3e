"""Turn one run's raw results into a markdown section, and put it into ``docs/benchmarks.md``.

Each case owns one section of the document, between ``<!-- bench:NAME:begin -->`` and
``<!-- bench:NAME:end -->``; rerunning a case replaces its section and leaves the others alone.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cases import Case

DOCS_HEADER = """\
# Benchmarks

<!-- Written by bench/report.py: the text above the first section is replaced on every run. -->

Measured with the harness in `bench/` (how to run it: `bench/README.md`), by the project's
benchmark protocol: membound and the peers a user would otherwise pick run side by side in one
run, on the same data, each in its own process; peak RSS comes from the OS; each figure is the
median of several runs with the contestants' order rotated between runs; every output is read
back and checked (row count and checksum) before its figures count.

Each section below is one case, written by `python bench/run.py --case NAME ...`; rerunning a
case replaces its section only. MB = 10^6 bytes, as in membound's `--max-memory`.

Columns: **time** is the whole process, start to exit (interpreter, imports, work), timed by the
harness; **work** is the export call alone, timed inside the contestant; **CPU** is the
process's user + system time from the OS (above the time when it uses both cores, and less
disturbed than the time by other load on a shared machine); **peak RSS** is the
process's maximum resident set size from the OS; **import baseline** is the peak RSS of the same
script stopped right after its imports; **above baseline** is the difference, the memory the work
itself took, to hold against the budget; **output** is the size of the file written, with each
tool's default Parquet settings (compression differs, the checked data does not).
"""


@dataclass
class Summary:
    """One contestant at one size: medians over its completed runs, and how its runs went."""

    name: str
    label: str
    role: str
    runs: int
    completed: int  # exited 0
    good: int  # exited 0 and wrote the right data (or had nothing to verify)
    status: str  # ok | unverified | failed | mismatch
    reasons: list[str]
    time_s: float | None
    work_s: float | None
    cpu_s: float | None
    peak_mb: float | None
    baseline_mb: float | None
    rows: int | None
    output_mb: float | None

    @property
    def above_mb(self) -> float | None:
        if self.peak_mb is None or self.baseline_mb is None:
            return None
        return self.peak_mb - self.baseline_mb

    @property
    def counts(self) -> bool:
        """Whether its figures may stand in a ratio: every run finished with the right data."""
        return self.status == "ok"


def _median(values: list[float | int | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarise(results: dict, size: dict) -> list[Summary]:
    summaries = []
    for contestant in results["contestants"]:
        runs = [run for run in size["runs"] if run["contestant"] == contestant["name"]]
        completed = [run for run in runs if run["run"]["exit_code"] == 0]
        good = [run for run in runs if run["status"] in ("ok", "unverified")]
        statuses = {run["status"] for run in runs}
        if statuses <= {"ok"}:
            status = "ok"
        elif statuses <= {"unverified"}:
            status = "unverified"
        elif "failed" in statuses:
            status = "failed"
        else:
            status = "mismatch"
        reasons = list(dict.fromkeys(run["reason"] for run in runs if run["reason"]))
        peak = _median([run["run"]["peak_rss_bytes"] for run in completed])
        baseline = _median(
            [run["baseline"]["peak_rss_bytes"] for run in runs if run["baseline"] is not None]
        )
        output = _median([run["output_bytes"] for run in completed])
        verified_rows = [run["verification"]["rows"] for run in completed if run["verification"]]
        summaries.append(
            Summary(
                name=contestant["name"],
                label=contestant["label"],
                role=contestant["role"],
                runs=len(runs),
                completed=len(completed),
                good=len(good),
                status=status,
                reasons=reasons,
                time_s=_median([run["run"]["wall_seconds"] for run in completed]),
                work_s=_median([run["work_seconds"] for run in completed]),
                cpu_s=_median([run["run"].get("cpu_seconds") for run in completed]),
                peak_mb=peak / 1e6 if peak is not None else None,
                baseline_mb=baseline / 1e6 if baseline is not None else None,
                rows=verified_rows[0] if verified_rows else None,
                output_mb=output / 1e6 if output is not None else None,
            )
        )
    return summaries


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _data_cell(summary: Summary) -> str:
    if summary.status == "ok":
        return "✓"
    if summary.status == "unverified":
        return "n/a"
    bad = summary.runs - summary.good
    word = "failed" if summary.status == "failed" else "✗ other data"
    return f"{word} ({bad}/{summary.runs})"


def _table(summaries: list[Summary]) -> list[str]:
    lines = [
        "| contestant | time (s) | work (s) | CPU (s) | peak RSS (MB) | import baseline (MB) "
        "| above baseline (MB) | rows | data | output (MB) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|:-:|--:|",
    ]
    for summary in summaries:
        cells = [
            summary.label,
            _number(summary.time_s, 2),
            _number(summary.work_s, 2),
            _number(summary.cpu_s, 1),
            _number(summary.peak_mb, 0),
            _number(summary.baseline_mb, 0),
            _number(summary.above_mb, 0),
            f"{summary.rows:,}" if summary.rows is not None else "—",
            _data_cell(summary),
            _number(summary.output_mb, 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _ratios(summaries: list[Summary], budget: str) -> list[str]:
    peers = [s for s in summaries if s.role == "peer" and s.counts]
    lines = []
    for ours in (s for s in summaries if s.role == "membound"):
        if not ours.counts:
            lines.append(f"- {ours.label} / best peer: no ratio, membound did not pass this size.")
            continue
        if not peers:
            lines.append(f"- {ours.label} / best peer: no ratio, no peer passed this size.")
            continue
        fastest = min(peers, key=lambda s: s.time_s or float("inf"))
        leanest = min(peers, key=lambda s: s.peak_mb or float("inf"))
        assert ours.time_s and ours.peak_mb and fastest.time_s and leanest.peak_mb
        lines.append(
            f"- {ours.label} / best peer: time **{ours.time_s / fastest.time_s:.2f}×** "
            f"(fastest peer: {fastest.label}, {fastest.time_s:.2f} s); peak RSS "
            f"**{ours.peak_mb / leanest.peak_mb:.2f}×** (leanest peer: {leanest.label}, "
            f"{leanest.peak_mb:.0f} MB); above its import baseline: "
            f"{_number(ours.above_mb, 0)} MB for a budget of {budget}."
        )
    return lines


def _problems(summaries: list[Summary]) -> list[str]:
    lines = []
    for summary in summaries:
        for reason in summary.reasons:
            reason = reason if len(reason) < 300 else reason[:297] + "..."
            lines.append(f"- {summary.label}: {reason.replace('|', '/')}")
    return lines


def _scaling(results: dict) -> list[str]:
    """How time and memory grow from the smallest to the largest size."""
    sizes = sorted(results["sizes"], key=lambda size: size["rows"])
    if len(sizes) < 2:
        return []
    small, large = sizes[0], sizes[-1]
    factor = large["rows"] / small["rows"]
    small_by_name = {s.name: s for s in summarise(results, small)}
    lines = [
        f"### Growth from {small['rows']:,} to {large['rows']:,} rows ({factor:g}× the rows)",
        "",
        "| contestant | time × | peak RSS × | above baseline (MB) |",
        "|---|--:|--:|--:|",
    ]
    for big in summarise(results, large):
        little = small_by_name[big.name]
        if not (big.counts or big.status == "unverified") or not (
            little.counts or little.status == "unverified"
        ):
            lines.append(f"| {big.label} | — | — | — |")
            continue
        assert big.time_s and little.time_s and big.peak_mb and little.peak_mb
        growth = f"{_number(little.above_mb, 0)} → {_number(big.above_mb, 0)}"
        lines.append(
            f"| {big.label} | {big.time_s / little.time_s:.1f} | "
            f"{big.peak_mb / little.peak_mb:.1f} | {growth} |"
        )
    return lines


def render_section(case: Case, results: dict) -> str:
    machine = results["machine"]
    versions = ", ".join(f"{name} {ver}" for name, ver in results["versions"].items())
    started = datetime.fromisoformat(results["started_at"]).strftime("%Y-%m-%d %H:%M UTC")
    rss_source = {
        "time": "`/usr/bin/time -v`",
        "getrusage": "`getrusage(RUSAGE_CHILDREN)` in a fresh wrapper process",
    }[results["rss_method"]]
    lines = [
        f"<!-- bench:{case.name}:begin -->",
        f"## {case.title}",
        "",
        case.description,
        "",
        f"- **Run:** {started}: `{results['command']}`",
        f"- **Machine:** {machine['nproc']} cores (nproc), "
        f"{machine['mem_total_bytes'] / 2**30:.1f} GiB RAM (MemTotal), {machine['cpu_model']}, "
        f"Linux {machine['kernel']}; peak RSS from {rss_source}",
        f"- **Software:** Python {machine['python']}; {versions}; "
        f"membound at commit {results['revision']}",
    ]
    if case.uses_budget:
        lines.append(
            f"- **Budget given to membound:** {results['budget']}. Figures are medians of "
            f"{results['repeat']} runs per contestant and size."
        )
    else:
        lines.append(f"- Figures are medians of {results['repeat']} runs per contestant and size.")
    if "revision_at_end" in results:
        lines.append(
            f"- **Warning:** membound's source changed during this run (commit "
            f"{results['revision']} at the start, {results['revision_at_end']} at the end), so "
            "its runs mix versions; rerun before quoting its figures."
        )
    lines.append("")
    if case.render_body is not None:
        lines += [*case.render_body(results), f"<!-- bench:{case.name}:end -->"]
        return "\n".join(lines) + "\n"
    for size in results["sizes"]:
        summaries = summarise(results, size)
        facts = "; ".join(f"{key} {value}" for key, value in size["facts"].items())
        lines += [f"### {size['rows']:,} rows ({facts})", "", *_table(summaries), ""]
        ratios = _ratios(summaries, results["budget"])
        if ratios:
            lines += ["**membound / best peer**", "", *ratios, ""]
        problems = _problems(summaries)
        if problems:
            lines += ["Failures and mismatches:", "", *problems, ""]
    scaling = _scaling(results)
    if scaling:
        lines += [*scaling, ""]
    lines.append(f"<!-- bench:{case.name}:end -->")
    return "\n".join(lines) + "\n"


def update_docs(path: Path, case_name: str, section: str) -> None:
    """Replace this case's section of the document (or append it), creating the document.

    The header (everything before the first section) is rewritten too, so that it always
    describes the columns the current harness writes.
    """
    text = path.read_text() if path.exists() else DOCS_HEADER
    first_section = text.find("<!-- bench:")
    text = DOCS_HEADER + ("\n" + text[first_section:] if first_section >= 0 else "")
    name = re.escape(case_name)
    pattern = re.compile(rf"<!-- bench:{name}:begin -->.*?<!-- bench:{name}:end -->\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
