from __future__ import annotations

import membound


def test_import_does_not_load_pyarrow():
    import subprocess
    import sys

    code = "import sys, membound, membound.errors; print('pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_all_is_sorted_and_complete():
    assert membound.__all__ == sorted(membound.__all__)
    # dir() includes the names loaded lazily; submodules are not public names (membound.copy
    # is both a submodule and the callable copy(): it is public).
    public = {
        name for name in dir(membound)
        if not name.startswith("_")
        and not (isinstance(getattr(membound, name), type(membound))
                 and not callable(getattr(membound, name)))
    }
    public -= {"annotations", "ALLOCATOR_UNTUNED"}
    assert public == set(membound.__all__)


def test_every_error_is_a_membound_error():
    for name in membound.__all__:
        obj = getattr(membound, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, Warning):
            assert issubclass(obj, membound.MemboundError)
