"""The byte budget: parse sizes, size batches in bytes, and keep a run inside ``max_memory``.

A :class:`Budget` is a configuration value. The mutable part of a run, the batch size that adapts
to the width of the rows actually seen and to the memory actually used, lives in a
:class:`BatchSizer` made by :meth:`Budget.sizer`, one per stream.
"""

from __future__ import annotations

import re
import warnings
from typing import Literal

from membound.errors import ConfigurationError, MemoryBudgetExceeded

__all__ = ["Budget", "BatchSizer", "Policy", "format_size", "parse_size"]

Policy = Literal["adapt", "warn", "raise"]

DEFAULT_MAX_MEMORY = 64_000_000  # the documented default: "64MB"

# One batch in flight gets this share of the budget. At any moment a pipeline holds the batch
# being fetched as Python objects (3-5x its Arrow size for narrow rows), its Arrow form, and the
# sink's buffer (a Parquet row group, a COPY buffer), so a batch must be a small part of it.
BATCH_SHARE = 1 / 16
# Below this, per-batch overhead (a commit, a Parquet row group header) dominates the run time.
MIN_BATCH_BYTES = 64 * 1024
# Above this a bigger batch buys no more speed, only memory.
MAX_BATCH_BYTES = 64 * 1024 * 1024
# Row-count bounds for a batch whatever the width: a batch is never empty, and a million rows is
# where every driver's per-call overhead is long amortised.
MIN_ROWS_PER_BATCH = 1
MAX_ROWS_PER_BATCH = 1_000_000
# Rows fetched before anything is known about their width; small enough that even 1 MB rows stay
# inside the smallest sensible budget.
FIRST_BATCH_ROWS = 64
# Under policy="adapt", the batch target shrinks by this factor each time memory is over budget,
# down to MIN_BATCH_BYTES.
ADAPT_SHRINK = 0.5

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str) -> int:
    """Turn ``"64MB"``, ``"64MiB"``, ``"1.5GB"`` or ``67108864`` into a number of bytes.

    MB, GB... are powers of 1000 and MiB, GiB... powers of 1024, as the SI and IEC say.
    Raises :class:`ConfigurationError` for anything else, including zero and negative sizes.
    """
    if isinstance(value, bool):
        raise ConfigurationError(f"{value!r} is not a size; give bytes or a string like '64MB'")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float) and value.is_integer():
        size = int(value)
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        unit = match.group(2).lower() if match else None
        if not match or unit not in _UNITS:
            raise ConfigurationError(
                f"{value!r} is not a size; write a number with an optional unit, "
                "such as '64MB', '64MiB', '1GB' or '67108864'"
            )
        size = int(float(match.group(1)) * _UNITS[unit])
    else:
        raise ConfigurationError(f"{value!r} is not a size; give bytes or a string like '64MB'")
    if size <= 0:
        raise ConfigurationError(f"a memory size must be positive, got {value!r}")
    return size


def format_size(nbytes: float) -> str:
    """``67108864`` -> ``"67.1 MB"``: a size for people, in the same SI units parse_size reads."""
    sign = "-" if nbytes < 0 else ""
    nbytes = abs(nbytes)
    for unit in ("B", "kB", "MB", "GB"):
        if nbytes < 1000:
            return f"{sign}{nbytes:.0f} {unit}" if unit == "B" else f"{sign}{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{sign}{nbytes:.1f} TB"


class Budget:
    """How much memory an operation may use above where it started, and what to do past it.

    ``Budget(max_memory="64MB", policy="adapt")``:

    - ``max_memory``: bytes, or a string such as ``"64MB"`` / ``"64MiB"``.
    - ``policy``: what happens when the process's resident memory goes over the budget:
      ``"adapt"`` (default) halves the batch size and goes on; ``"warn"`` issues a
      ``ResourceWarning`` once and goes on; ``"raise"`` raises :class:`MemoryBudgetExceeded`.

    Batches are sized in bytes from the budget (:attr:`batch_bytes`), never by a fixed row count.
    """

    __slots__ = ("max_memory", "policy")

    max_memory: int
    policy: Policy

    def __init__(self, max_memory: int | str = DEFAULT_MAX_MEMORY, *, policy: Policy = "adapt"):
        if policy not in ("adapt", "warn", "raise"):
            raise ConfigurationError(
                f"policy must be 'adapt', 'warn' or 'raise', got {policy!r}"
            )
        object.__setattr__(self, "max_memory", parse_size(max_memory))
        object.__setattr__(self, "policy", policy)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Budget is immutable; make a new one")

    def __repr__(self) -> str:
        return f"Budget(max_memory={format_size(self.max_memory)!r}, policy={self.policy!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Budget):
            return NotImplemented
        return (self.max_memory, self.policy) == (other.max_memory, other.policy)

    def __hash__(self) -> int:
        return hash((self.max_memory, self.policy))

    @classmethod
    def coerce(cls, value: Budget | int | str | None) -> Budget:
        """A Budget from a Budget, a size, or None (the default budget)."""
        if isinstance(value, Budget):
            return value
        if value is None:
            return cls()
        return cls(value)

    @property
    def batch_bytes(self) -> int:
        """Target size of one batch in bytes (its in-memory Arrow or Python size)."""
        share = int(self.max_memory * BATCH_SHARE)
        return max(MIN_BATCH_BYTES, min(MAX_BATCH_BYTES, share))

    def sizer(
        self, *, share: float = 1.0, conversion: bool = True, warm: bool = True
    ) -> BatchSizer:
        """A fresh :class:`BatchSizer` for one stream; ``share`` scales its batch target.

        ``conversion=False`` says the stream never turns Python objects into Arrow, so the
        one-time cost of pyarrow's first such conversion need not be paid before the baseline.
        ``warm=False`` says the stream never touches Arrow at all (Django model rows): no
        warm-up, so pyarrow is not even imported.
        """
        return BatchSizer(self, share=share, conversion=conversion, warm=warm)


class BatchSizer:
    """Chooses how many rows the next batch holds, from the bytes per row measured so far.

    One per stream. Call :meth:`observe` after every batch with its row count and byte size;
    read :attr:`rows_per_batch` for the next one. A run of tiny rows gets large batches and a
    run of multi-MB values gets small ones, down to a single row: a value larger than the target
    still passes, alone. :meth:`check_memory` enforces the budget's policy.
    """

    def __init__(
        self, budget: Budget, *, share: float = 1.0, conversion: bool = True, warm: bool = True
    ) -> None:
        from membound.memory import rss_bytes, warm_up

        # The baseline is taken after one-time costs (pyarrow imports pandas and numpy on its
        # first conversion, ~50 MB) so that they are not charged to the first batch. A stream
        # that never uses Arrow skips them: importing pyarrow alone would cost it ~40 MB.
        if warm:
            warm_up(conversion=conversion)
        self.budget = budget
        self.target_bytes = max(MIN_BATCH_BYTES, int(budget.batch_bytes * share))
        self.bytes_per_row: float | None = None
        self.baseline_rss = rss_bytes()
        self.peak_used = 0
        self.overruns = 0
        self._warned = False

    def __repr__(self) -> str:
        return (
            f"BatchSizer(target_bytes={self.target_bytes}, bytes_per_row={self.bytes_per_row}, "
            f"rows_per_batch={self.rows_per_batch})"
        )

    @property
    def rows_per_batch(self) -> int:
        if self.bytes_per_row is None:
            return FIRST_BATCH_ROWS
        rows = int(self.target_bytes / max(self.bytes_per_row, 1.0))
        return max(MIN_ROWS_PER_BATCH, min(MAX_ROWS_PER_BATCH, rows))

    def observe(self, rows: int, nbytes: int) -> None:
        """Record a batch of ``rows`` rows taking ``nbytes`` bytes."""
        if rows <= 0:
            return
        width = nbytes / rows
        if self.bytes_per_row is None or width > self.bytes_per_row:
            # Grow the estimate at once: wide rows must shrink the next batch immediately.
            self.bytes_per_row = width
        else:
            # Shrink it gently, so one narrow batch between wide ones does not blow the next up.
            self.bytes_per_row = 0.5 * self.bytes_per_row + 0.5 * width

    def check_memory(self, where: str = "") -> int:
        """Compare resident memory above the stream's start with the budget; apply the policy.

        Returns the bytes used above the baseline. Under ``"adapt"`` an overrun halves the batch
        target; under ``"warn"`` it warns once; under ``"raise"`` it raises
        :class:`MemoryBudgetExceeded`.
        """
        from membound.memory import rss_bytes

        used = rss_bytes() - self.baseline_rss
        self.peak_used = max(self.peak_used, used)
        if used <= self.budget.max_memory:
            return used
        self.overruns += 1
        policy = self.budget.policy
        if policy == "raise":
            raise MemoryBudgetExceeded(used, self.budget.max_memory, where)
        if policy == "warn":
            if not self._warned:
                self._warned = True
                warnings.warn(
                    str(MemoryBudgetExceeded(used, self.budget.max_memory, where)),
                    ResourceWarning,
                    stacklevel=2,
                )
        else:
            self.target_bytes = max(MIN_BATCH_BYTES, int(self.target_bytes * ADAPT_SHRINK))
        return used
