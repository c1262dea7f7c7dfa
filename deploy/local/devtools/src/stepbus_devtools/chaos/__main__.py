"""``python -m stepbus_devtools.chaos``: one chaos run against the local stack, its report
printed; exits 0 when every invariant held, 1 when one broke, 2 when the stack is unusable."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from stepbus_devtools import stack

from .config import parse_args
from .runner import run_chaos, say


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chaos the command line asks for, print the report, return the exit code."""
    config = parse_args(argv)
    # aiokafka logs every failed reconnect while the broker is down: noise here.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        report = asyncio.run(run_chaos(config))
    except stack.StackError as error:
        print(f"stepbus: {error}", file=sys.stderr)
        return 2
    say(report.text())
    say(f"the stack keeps running with STEPBUS_TOPIC_PREFIX={report.prefix} (`make down` stops it)")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
