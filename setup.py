"""membound's optional C extensions; everything else is in pyproject.toml.

- ``membound._mysqlarrow`` (MySQL/MariaDB results -> Arrow buffers) needs MariaDB's client
  library with its headers (Debian: ``libmariadb-dev``; found through ``mariadb_config`` or
  ``pkg-config libmariadb``). Without it MySQL reads go through the Python drivers.
- ``membound._sqlitearrow`` (SQLite results -> Arrow buffers) needs SQLite's headers and
  library (Debian: ``libsqlite3-dev``). Without it SQLite reads go through ADBC's driver.
- ``membound._pgarrow`` (PostgreSQL binary COPY -> Arrow buffers) needs libpq with its headers
  (Debian: ``libpq-dev``; found through ``pkg-config libpq`` or ``pg_config``). Without it
  PostgreSQL reads go through ADBC's driver.

All need a C compiler. Without what they need membound installs without them (slower, same
results). ``MEMBOUND_BUILD_EXTENSIONS=0`` skips them on purpose, ``=1`` makes a failed build an
error.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

WANT = os.environ.get("MEMBOUND_BUILD_EXTENSIONS", "auto").lower()


def _flags(*commands: list[str]) -> tuple[list[str], list[str]] | None:
    """Compiler (-I) and linker flags from the first of ``commands`` (a ``*_config`` or
    ``pkg-config`` call) that answers, or None when none does."""
    for command in commands:
        if shutil.which(command[0]) is None:
            continue
        try:
            found = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            continue
        words = shlex.split(found.replace("\n", " "))
        if words:
            return ([w for w in words if w.startswith("-I")],
                    [w for w in words if not w.startswith("-I")])
    return None


def _mariadb_flags() -> tuple[list[str], list[str]] | None:
    """libmariadb's flags, or None when it is not installed."""
    return _flags(["mariadb_config", "--cflags", "--libs"],
                  ["pkg-config", "--cflags", "--libs", "libmariadb"])


class OptionalBuildExt(build_ext):
    """Builds the extension when it can; otherwise says so and goes on without it."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure leaves the pure-Python paths
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._skip(exc)

    @staticmethod
    def _skip(exc: Exception) -> None:
        if WANT in ("1", "yes", "true"):
            raise exc
        print(f"membound: a C reader did not build ({exc}); reads of its database go "
              "through the Python drivers", file=sys.stderr)


def _sqlite_flags() -> tuple[list[str], list[str]] | None:
    """SQLite's flags, or None when its header is not found."""
    found = _flags(["pkg-config", "--cflags", "--libs", "sqlite3"])
    if found is None and os.path.exists("/usr/include/sqlite3.h"):
        return [], ["-lsqlite3"]
    return found


def _libpq_flags() -> tuple[list[str], list[str]] | None:
    """libpq's flags, or None when its headers are not found."""
    found = _flags(["pkg-config", "--cflags", "--libs", "libpq"])
    if found is not None or shutil.which("pg_config") is None:
        return found
    try:
        include, libdir = subprocess.run(
            ["pg_config", "--includedir", "--libdir"], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError, ValueError):
        return None
    if not os.path.exists(os.path.join(include, "libpq-fe.h")):
        return None
    return [f"-I{include}"], [f"-L{libdir}", "-lpq"]


ext_modules = []
if WANT not in ("0", "no", "false"):
    for name, flags in (("_mysqlarrow", _mariadb_flags()), ("_sqlitearrow", _sqlite_flags()),
                        ("_pgarrow", _libpq_flags())):
        if flags is None:
            continue
        cflags, ldflags = flags
        ext_modules.append(
            Extension(
                f"membound.{name}",
                [f"src/membound/{name}.c"],
                depends=["src/membound/_arrowbuf.h"],
                extra_compile_args=[*cflags, "-O2", "-std=c11"],
                extra_link_args=ldflags,
            )
        )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
