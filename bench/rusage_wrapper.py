"""Run a command, wait for it, and write its exit code, peak RSS and CPU time as JSON.

The fallback for machines without GNU time: ``measure.py`` starts a fresh copy of this wrapper
per run, so ``RUSAGE_CHILDREN`` covers exactly one command. Usage::

    python bench/rusage_wrapper.py REPORT.json -- COMMAND [ARG...]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def main() -> int:
    report_path, separator, *command = sys.argv[1:]
    if separator != "--" or not command:
        raise SystemExit(__doc__)
    exit_code = subprocess.call(command)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(report_path, "w") as report:
        # On Linux ru_maxrss is in KiB.
        report_data = {
            "exit_code": exit_code,
            "max_rss_kib": usage.ru_maxrss,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
        }
        json.dump(report_data, report)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
