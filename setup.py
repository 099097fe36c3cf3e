"""The optional C extension ``membound._mysqlarrow`` (MySQL/MariaDB results -> Arrow buffers).

Everything else is in pyproject.toml. The extension needs a C compiler and MariaDB's client
library with its headers (Debian: ``libmariadb-dev``; found through ``mariadb_config`` or
``pkg-config libmariadb``). Without them membound installs without it and reads MySQL through
the Python drivers (slower, same results); ``MEMBOUND_BUILD_MYSQLARROW=0`` skips it on purpose,
``=1`` makes a failed build an error.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

WANT = os.environ.get("MEMBOUND_BUILD_MYSQLARROW", "auto").lower()


def _flags() -> tuple[list[str], list[str]] | None:
    """Compiler and linker flags for libmariadb, or None when it is not installed."""
    for command in (["mariadb_config", "--cflags", "--libs"],
                    ["pkg-config", "--cflags", "--libs", "libmariadb"]):
        if shutil.which(command[0]) is None:
            continue
        try:
            found = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            continue
        words = shlex.split(found.replace("\n", " "))
        return ([w for w in words if w.startswith("-I")],
                [w for w in words if not w.startswith("-I")])
    return None


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
        print(f"membound: the C MySQL reader did not build ({exc}); MySQL reads go through "
              "the Python drivers", file=sys.stderr)


ext_modules = []
flags = _flags() if WANT not in ("0", "no", "false") else None
if flags is not None:
    cflags, ldflags = flags
    ext_modules.append(
        Extension(
            "membound._mysqlarrow",
            ["src/membound/_mysqlarrow.c"],
            extra_compile_args=[*cflags, "-O2", "-std=c11"],
            extra_link_args=ldflags,
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
