"""Run one command in a child process and take its wall time and peak RSS from the OS.

Two ways to get the peak RSS, both the kernel's ``ru_maxrss`` of the child:

- ``time``: ``/usr/bin/time -v`` (GNU time) runs the command and reports "Maximum resident set
  size". Preferred: the measuring process adds nothing to the figure.
- ``getrusage``: a fresh wrapper process (``rusage_wrapper.py``) runs the command, waits for it
  and reads ``resource.getrusage(RUSAGE_CHILDREN)``. A fresh wrapper per run, so the figure
  belongs to that run's command alone. Its floor is the wrapper's own RSS (about 15 MB): the
  kernel counts the child's memory between fork and exec, when it is still a copy of the
  wrapper. That only matters for tiny non-Python contestants such as a database CLI.

``ru_maxrss`` is the peak of the largest single process (not the sum over a process tree); every
contestant here is one process, with threads.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BENCH_DIR = Path(__file__).resolve().parent
GNU_TIME = "/usr/bin/time"
RSS_WRAPPER = BENCH_DIR / "rusage_wrapper.py"

RssMethod = Literal["time", "getrusage"]

# The tail of a failing command's stderr kept in the results: enough for a traceback's end.
STDERR_TAIL_LINES = 20

_MAX_RSS_RE = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


@dataclass
class Measurement:
    """One child process run: how it ended, how long it took, and its peak RSS in bytes."""

    argv: list[str]
    exit_code: int | None
    wall_seconds: float
    peak_rss_bytes: int | None
    cpu_seconds: float | None = None  # user + system; less sensitive than wall time to a busy box
    timed_out: bool = False
    stderr_tail: str = ""

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def to_json(self) -> dict[str, object]:
        return {
            "argv": self.argv,
            "exit_code": self.exit_code,
            "wall_seconds": self.wall_seconds,
            "peak_rss_bytes": self.peak_rss_bytes,
            "cpu_seconds": self.cpu_seconds,
            "timed_out": self.timed_out,
            "stderr_tail": self.stderr_tail,
        }


def gnu_time_works() -> bool:
    """True when ``/usr/bin/time -v`` exists and reports a maximum RSS."""
    if not Path(GNU_TIME).exists():
        return False
    try:
        completed = subprocess.run(
            [GNU_TIME, "-v", "true"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return False
    return _MAX_RSS_RE.search(completed.stderr) is not None


def pick_rss_method(requested: str) -> RssMethod:
    """``auto`` means GNU time when it works, else the getrusage wrapper."""
    if requested == "auto":
        return "time" if gnu_time_works() else "getrusage"
    if requested == "time" and not gnu_time_works():
        raise SystemExit(f"{GNU_TIME} -v is not usable here; use --rss-method getrusage")
    if requested not in ("time", "getrusage"):
        raise SystemExit(f"unknown RSS method {requested!r}")
    return requested  # type: ignore[return-value]


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def run_measured(
    argv: list[str],
    *,
    method: RssMethod,
    timeout_seconds: float,
    env: dict[str, str] | None = None,
    stdout_to_null: bool = True,
) -> Measurement:
    """Run ``argv`` to completion (or until the timeout) and measure it."""
    with tempfile.TemporaryDirectory(prefix="membound-bench-") as scratch:
        report_path = Path(scratch) / "rusage.txt"
        stderr_path = Path(scratch) / "stderr.txt"
        if method == "time":
            wrapped = [GNU_TIME, "-v", "-o", str(report_path), *argv]
        else:
            wrapped = [sys.executable, str(RSS_WRAPPER), str(report_path), "--", *argv]
        stdout = subprocess.DEVNULL if stdout_to_null else None
        started = time.perf_counter()
        timed_out = False
        with open(stderr_path, "wb") as stderr:
            # A new session, so a timeout can end the whole process group and nothing else.
            process = subprocess.Popen(
                wrapped, stdout=stdout, stderr=stderr, env=env, start_new_session=True
            )
            try:
                process.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(process.pid, 9)
                process.wait()
        wall_seconds = time.perf_counter() - started
        exit_code, peak_rss, cpu_seconds = _read_report(method, report_path)
        if exit_code is None and not timed_out:
            exit_code = process.returncode
        return Measurement(
            argv=argv,
            exit_code=exit_code,
            wall_seconds=wall_seconds,
            peak_rss_bytes=peak_rss,
            cpu_seconds=cpu_seconds,
            timed_out=timed_out,
            stderr_tail=_tail(stderr_path),
        )


def _read_report(
    method: RssMethod, report_path: Path
) -> tuple[int | None, int | None, float | None]:
    """The child's exit code, peak RSS in bytes and CPU seconds, as its measurer recorded them."""
    try:
        text = report_path.read_text()
    except OSError:
        return None, None, None
    if method == "getrusage":
        report = json.loads(text)
        return report["exit_code"], report["max_rss_kib"] * 1024, report["cpu_seconds"]
    match = _MAX_RSS_RE.search(text)
    peak_rss = int(match.group(1)) * 1024 if match else None
    exit_match = re.search(r"Exit status: (\d+)", text)
    signal_match = re.search(r"Command terminated by signal (\d+)", text)
    if signal_match:
        exit_code: int | None = 128 + int(signal_match.group(1))
    elif exit_match:
        exit_code = int(exit_match.group(1))
    else:
        exit_code = None
    cpu_seconds = None
    user_match = re.search(r"User time \(seconds\): ([\d.]+)", text)
    system_match = re.search(r"System time \(seconds\): ([\d.]+)", text)
    if user_match and system_match:
        cpu_seconds = float(user_match.group(1)) + float(system_match.group(1))
    return exit_code, peak_rss, cpu_seconds
