from __future__ import annotations

import membound


def test_all_is_sorted_and_complete():
    assert membound.__all__ == sorted(membound.__all__)
    public = {
        name for name in vars(membound)
        if not name.startswith("_") and not isinstance(getattr(membound, name), type(membound))
    }
    public -= {"annotations", "ALLOCATOR_UNTUNED"}
    assert public == set(membound.__all__)


def test_every_error_is_a_membound_error():
    for name in membound.__all__:
        obj = getattr(membound, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, Warning):
            assert issubclass(obj, membound.MemboundError)
