"""Run a benchmark case: every contestant side by side, each in its own process, on the same data.

    python bench/run.py --case sqlite-export --rows 2000000 10000000 --repeat 3

For each size, each repeat runs every contestant once, in an order rotated by one per repeat so
that no contestant always runs first or last. Each run is two child processes: the contestant
doing only its imports (its baseline), then the contestant doing the job. Wall time and peak RSS
come from the OS (see ``measure.py``); the harness then reads the output back and checks its row
count and checksum against the source. Raw results go to ``bench/results/`` as JSON and the
medians into this case's section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from cases import CASES, Case, Contestant, Dataset, RunSpec
from checksum import Verification
from measure import Measurement, pick_rss_method, run_measured
from report import render_section, update_docs

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
OUTPUT_DIR = BENCH_DIR / "data" / "out"
DOCS_PATH = REPO_DIR / "docs" / "benchmarks.md"

# A run that takes longer than this is stopped and reported as failed; 10M rows by the slowest
# peer take a few minutes on two cores.
DEFAULT_TIMEOUT_SECONDS = 3600


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", choices=sorted(CASES), default="sqlite-export")
    parser.add_argument(
        "--rows", type=int, nargs="+", help="table sizes (default: the case's, e.g. 2000000)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per contestant and size")
    parser.add_argument("--budget", default="64MB", help="max memory given to membound")
    parser.add_argument(
        "--contestants", nargs="+", metavar="NAME", help="run only these (default: all)"
    )
    parser.add_argument("--rss-method", choices=["auto", "time", "getrusage"], default="auto")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS)
    parser.add_argument(
        "--no-docs", action="store_true", help=f"do not update {DOCS_PATH.relative_to(REPO_DIR)}"
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="run nothing: rewrite the docs section from a saved results file",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.rows is None:
        args.rows = list(CASES[args.case].default_rows)
    if args.contestants:
        known = {contestant.name for contestant in CASES[args.case].contestants}
        unknown = sorted(set(args.contestants) - known)
        if unknown:
            parser.error(f"unknown contestants {unknown}; this case has {sorted(known)}")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine_facts() -> dict[str, object]:
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_total_kib = next(
        (int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:")), 0
    )
    cpu_model = ""
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "mem_total_bytes": mem_total_kib * 1024,
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision() -> str:
    """The repository's commit, marked dirty when src/ has uncommitted changes."""

    def git(*args: str) -> str:
        completed = subprocess.run(
            ["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True, check=False
        )
        return completed.stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--", "src"):
        revision += " + uncommitted src/"
    return revision


def source_fingerprint() -> str:
    """A hash of membound's source files, to tell whether the code changed during a run.

    The package is installed editable and other people work on it meanwhile: a commit or an
    edit in the middle of a run would put two versions of membound in one table.
    """
    digest = hashlib.sha256()
    for path in sorted((REPO_DIR / "src").rglob("*.py")):
        digest.update(str(path.relative_to(REPO_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def judge(
    contestant: Contestant, run: Measurement, verification: Verification | None, dataset: Dataset
) -> tuple[str, str]:
    """A run's status (ok, unverified, failed, mismatch) and the reason when not ok."""
    if run.timed_out:
        return "failed", f"timed out after {run.wall_seconds:.0f} s"
    if run.exit_code != 0:
        last_line = run.stderr_tail.strip().splitlines()[-1:] or ["no error output"]
        return "failed", f"exit code {run.exit_code}: {last_line[0]}"
    if verification is None:
        return "unverified", ""
    problems = list(verification.problems)
    reference = dataset.reference_for(contestant)
    if not problems and verification.rows != reference.rows:
        problems.append(f"{verification.rows:,} rows instead of {reference.rows:,}")
    if not problems and verification.checksum != reference.checksum:
        problems.append(f"checksum {verification.checksum} instead of {reference.checksum}")
    if problems:
        return "mismatch", "; ".join(problems)
    return "ok", ""


def run_one(
    case: Case,
    contestant: Contestant,
    dataset: Dataset,
    *,
    budget: str,
    rss_method: str,
    timeout: float,
) -> dict[str, object]:
    """Measure one contestant once (baseline, then the job), verify its output, clean up."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="run-", dir=OUTPUT_DIR) as scratch:
        spec = RunSpec(
            dataset=dataset,
            output=Path(scratch) / f"{contestant.name}{case.output_suffix}",
            budget=budget,
            timing_path=Path(scratch) / "timing.json",
        )
        baseline_argv = contestant.baseline_argv(spec)
        baseline = None
        if baseline_argv is not None:
            baseline = run_measured(baseline_argv, method=rss_method, timeout_seconds=timeout)
        run = run_measured(contestant.argv(spec), method=rss_method, timeout_seconds=timeout)
        timing = json.loads(spec.timing_path.read_text()) if spec.timing_path.exists() else {}
        verification = None
        if run.succeeded and contestant.role != "limit":
            verification = case.verify(spec.output, dataset)
        status, reason = judge(contestant, run, verification, dataset)
        output_bytes = spec.output.stat().st_size if spec.output.exists() else None
    return {
        "contestant": contestant.name,
        "status": status,
        "reason": reason,
        "baseline": baseline.to_json() if baseline else None,
        "run": run.to_json(),
        "work_seconds": timing.get("work_seconds"),
        "details": timing.get("details"),
        "output_bytes": output_bytes,
        "verification": verification.to_json() if verification else None,
    }


def describe(record: dict[str, object]) -> str:
    run = record["run"]
    baseline = record["baseline"]
    assert isinstance(run, dict)
    peak = run["peak_rss_bytes"]
    text = f"{run['wall_seconds']:7.2f} s"
    text += f"  peak {peak / 1e6:7.1f} MB" if peak else "  peak ?"
    if isinstance(baseline, dict) and baseline["peak_rss_bytes"]:
        text += f"  baseline {baseline['peak_rss_bytes'] / 1e6:6.1f} MB"
    text += f"  {record['status']}"
    if record["reason"]:
        text += f": {record['reason']}"
    return text


def publish(case: Case, results: dict[str, object], *, write_docs: bool) -> None:
    section = render_section(case, results)
    print(section)
    if write_docs:
        update_docs(DOCS_PATH, case.name, section)
        log(f"updated {DOCS_PATH}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render:
        saved = json.loads(args.render.read_text())
        publish(CASES[saved["case"]], saved, write_docs=not args.no_docs)
        return
    case = CASES[args.case]
    contestants = [
        contestant
        for contestant in case.contestants
        if not args.contestants or contestant.name in args.contestants
    ]
    rss_method = pick_rss_method(args.rss_method)
    started_at = datetime.now(UTC)
    command = shlex.join(["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    results: dict[str, object] = {
        "case": case.name,
        "command": command,
        "started_at": started_at.isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "versions": package_versions(case.packages),
        "revision": git_revision(),
        "source_fingerprint": source_fingerprint(),
        "rss_method": rss_method,
        "budget": args.budget,
        "repeat": args.repeat,
        "contestants": [{"name": c.name, "label": c.label, "role": c.role} for c in contestants],
        "sizes": [],
    }
    log(
        f"{case.name}: {len(contestants)} contestants, rows {args.rows}, repeat {args.repeat}, "
        f"RSS from {rss_method}"
    )
    for rows in args.rows:
        log(f"preparing {rows:,} rows ...")
        prepare_started = time.perf_counter()
        dataset = case.prepare(rows)
        log(
            f"  ready in {time.perf_counter() - prepare_started:.0f} s: {dataset.facts}, "
            f"reference checksum {dataset.reference.checksum}"
        )
        size: dict[str, object] = {
            "rows": rows,
            "facts": dataset.facts,
            "reference": dataset.reference.to_json(),
            "runs": [],
        }
        results["sizes"].append(size)  # type: ignore[union-attr]
        for repeat in range(args.repeat):
            shift = repeat % len(contestants)
            order = contestants[shift:] + contestants[:shift]
            for position, contestant in enumerate(order):
                record = run_one(
                    case,
                    contestant,
                    dataset,
                    budget=args.budget,
                    rss_method=rss_method,
                    timeout=args.timeout,
                )
                record.update(repeat=repeat, position=position)
                size["runs"].append(record)  # type: ignore[union-attr]
                log(f"  {rows:>11,} #{repeat + 1} {contestant.name:<18} {describe(record)}")

    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    if source_fingerprint() != results["source_fingerprint"]:
        results["revision_at_end"] = git_revision()
        log("warning: membound's source changed during the run; the report says so")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    results_path = RESULTS_DIR / f"{case.name}-{stamp}.json"
    results_path.write_text(json.dumps(results, indent=1))
    log(f"raw results: {results_path}")

    publish(case, results, write_docs=not args.no_docs)


if __name__ == "__main__":
    main()
