from __future__ import annotations

import pytest

from membound import Budget, ConfigurationError, MemoryBudgetExceeded, format_size, parse_size
from membound.budget import MAX_ROWS_PER_BATCH, MIN_BATCH_BYTES, BatchSizer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64MB", 64_000_000),
        ("64MiB", 64 * 1024**2),
        ("1GB", 1_000_000_000),
        ("1.5GB", 1_500_000_000),
        ("512kb", 512_000),
        ("  32 mib ", 32 * 1024**2),
        ("67108864", 67108864),
        (67108864, 67108864),
        ("100b", 100),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["lots", "64XB", "-5MB", "0", 0, -1, "", "MB", True, None, 1.5])
def test_parse_size_rejects_nonsense(bad):
    with pytest.raises(ConfigurationError, match="size|positive"):
        parse_size(bad)


def test_format_size_round_trips_through_parse():
    assert format_size(64_000_000) == "64.0 MB"
    assert format_size(512) == "512 B"
    assert parse_size(format_size(64_000_000).replace(" ", "")) == 64_000_000


def test_budget_value_object():
    budget = Budget("64MB")
    assert budget == Budget(64_000_000)
    assert repr(budget) == "Budget(max_memory='64.0 MB', policy='adapt')"
    assert hash(budget) == hash(Budget("64MB"))
    with pytest.raises(AttributeError):
        budget.max_memory = 1  # type: ignore[misc]
    with pytest.raises(ConfigurationError, match="policy"):
        Budget("64MB", policy="panic")  # type: ignore[arg-type]
    assert Budget.coerce(None) == Budget()
    assert Budget.coerce("1GB").max_memory == 1_000_000_000


def test_batch_bytes_scales_with_budget_within_bounds():
    assert Budget("32MB").batch_bytes == 2_000_000
    assert Budget("1MB").batch_bytes == MIN_BATCH_BYTES
    assert Budget("100GB").batch_bytes == 64 * 1024 * 1024


def test_sizer_gives_tiny_rows_big_batches_and_huge_rows_single_rows():
    sizer = Budget("32MB").sizer()
    sizer.observe(1000, 100_000)  # 100-byte rows
    assert sizer.rows_per_batch == 20_000
    sizer.observe(2, 40_000_000)  # 20 MB values
    assert sizer.rows_per_batch == 1
    # Narrow rows again: the estimate shrinks gradually, not all at once.
    sizer.observe(1000, 100_000)
    assert 1 <= sizer.rows_per_batch < 20_000
    for _ in range(40):
        sizer.observe(1000, 100_000)
    assert sizer.rows_per_batch == pytest.approx(20_000, rel=0.01)


def test_sizer_caps_rows_for_zero_width_rows():
    sizer = Budget("1GB").sizer()
    sizer.observe(10, 0)
    assert sizer.rows_per_batch == MAX_ROWS_PER_BATCH


def _over_budget(sizer: BatchSizer) -> None:
    # Pretend the stream started 10 MB above where RSS really is: any reading is then "over".
    sizer.baseline_rss -= 10_000_000


def test_policy_adapt_shrinks_batches():
    sizer = Budget(1_000_000, policy="adapt").sizer()
    _over_budget(sizer)
    before = sizer.target_bytes
    sizer.check_memory()
    assert sizer.target_bytes < before or sizer.target_bytes == MIN_BATCH_BYTES
    assert sizer.overruns == 1


def test_policy_warn_warns_once():
    sizer = Budget(1_000_000, policy="warn").sizer()
    _over_budget(sizer)
    with pytest.warns(ResourceWarning, match="over the budget"):
        sizer.check_memory()
        sizer.check_memory()
    assert sizer.overruns == 2


def test_policy_raise_raises():
    sizer = Budget(1_000_000, policy="raise").sizer()
    _over_budget(sizer)
    with pytest.raises(MemoryBudgetExceeded, match="raise max_memory") as info:
        sizer.check_memory("testing")
    assert info.value.budget == 1_000_000
    assert info.value.used > 1_000_000
