"""What a benchmark case and a contestant are, for the harness in ``run.py``.

A **case** is one job measured side by side: it prepares the data at a given size (building and
caching it if needed), lists its contestants, and verifies what each one wrote against a
reference. A **contestant** is one way of doing the job, run as its own child process: a Python
script under ``bench/contestants/`` that takes the shared command line of ``_common.py``, or any
other command (e.g. a database's CLI as the physical limit).

Roles: ``peer`` is what a user would otherwise pick, ``membound`` is us, ``limit`` is a
reference (e.g. reading to /dev/null) that produces no output to verify and is left out of the
ratios.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from checksum import Verification

BENCH_DIR = Path(__file__).resolve().parent.parent
CONTESTANTS_DIR = BENCH_DIR / "contestants"

Role = Literal["peer", "membound", "limit"]


@dataclass(frozen=True)
class Dataset:
    """A case's data at one size, ready to be read by the contestants."""

    rows: int
    source: str  # a file path for SQLite, a URL for a server
    table: str
    reference: Verification  # rows and checksum every verified output must match
    facts: dict[str, str] = field(default_factory=dict)  # shown in the report, e.g. file size
    # Further references, by name, for a case whose contestants produce different things (the
    # codecs case: the payload column, or whole rows); a contestant names its own.
    references: dict[str, Verification] = field(default_factory=dict)

    def reference_for(self, contestant: Contestant) -> Verification:
        if contestant.reference is None:
            return self.reference
        return self.references[contestant.reference]


@dataclass(frozen=True)
class RunSpec:
    """One contestant run's inputs."""

    dataset: Dataset
    output: Path
    budget: str
    timing_path: Path


@dataclass(frozen=True)
class Contestant:
    """One way of doing a case's job. Give ``script`` (a Python contestant) or ``command``."""

    name: str  # short id, for --contestants and the JSON results
    label: str  # what the report's table shows
    role: Role = "peer"
    script: str | None = None  # file name under bench/contestants/
    command: Callable[[RunSpec], list[str]] | None = None
    baseline_command: Sequence[str] | None = None  # for `command` contestants
    reference: str | None = None  # a key of Dataset.references; None: Dataset.reference

    def argv(self, spec: RunSpec) -> list[str]:
        if self.command is not None:
            return self.command(spec)
        assert self.script is not None, f"contestant {self.name} has no script or command"
        return [
            *self._script_argv(spec),
            "--budget",
            spec.budget,
            "--timing",
            str(spec.timing_path),
        ]

    def baseline_argv(self, spec: RunSpec) -> list[str] | None:
        """The same process doing only its imports; None when there is no such thing."""
        if self.command is not None:
            return list(self.baseline_command) if self.baseline_command else None
        return [*self._script_argv(spec), "--imports-only"]

    def _script_argv(self, spec: RunSpec) -> list[str]:
        script = CONTESTANTS_DIR / str(self.script)
        dataset = spec.dataset
        return [
            sys.executable,
            str(script),
            dataset.source,
            str(spec.output),
            "--table",
            dataset.table,
        ]


@dataclass(frozen=True)
class Case:
    """One job measured side by side."""

    name: str  # as given to --case, and the key of its section in docs/benchmarks.md
    title: str  # the section's heading
    description: str  # a paragraph of markdown under the heading: what is measured, how
    contestants: tuple[Contestant, ...]
    packages: tuple[str, ...]  # distributions whose versions the report lists
    prepare: Callable[[int], Dataset]  # build or reuse the data at N rows, warm it up
    verify: Callable[[Path, Dataset], Verification]  # check one contestant's output
    output_suffix: str = ".parquet"
    default_rows: tuple[int, ...] = (2_000_000,)  # --rows when not given
    uses_budget: bool = True  # whether --budget means something here (the report says it)
    # The section's body (its tables) from the raw results, for a case that measures other
    # things than an export's time and memory; None: the export tables of report.py.
    render_body: Callable[[dict], list[str]] | None = None
