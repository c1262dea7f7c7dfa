"""``python -m stepbus_devtools.fuzz``: one fuzz run against the local stack, its report
printed; exits 0 when every check held, 1 when one failed, 2 when the stack is unusable."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from stepbus_devtools import stack

from .config import parse_args
from .runner import run_fuzz, say


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fuzz the command line asks for, print the report, return the exit code."""
    config = parse_args(argv)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        report = asyncio.run(run_fuzz(config))
    except stack.StackError as error:
        print(f"stepbus: {error}", file=sys.stderr)
        return 2
    say(report.text())
    if config.prepare:
        say(
            f"the services keep running with STEPBUS_TOPIC_PREFIX={report.prefix}; "
            "`python -m stepbus_devtools.stack restart <name>` puts one back on the default prefix"
        )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
