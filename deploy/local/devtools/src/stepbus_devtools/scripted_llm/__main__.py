"""Run the scripted model: ``python -m stepbus_devtools.scripted_llm [--port 8090]``.

``STEPBUS_SCRIPTED_LLM_LATENCY_MS`` (``"200"`` or ``"50-300"``) is the default latency range.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import uvicorn

from stepbus_devtools.scripted_llm.script import parse_latency_range
from stepbus_devtools.scripted_llm.server import create_app

LATENCY_ENV = "STEPBUS_SCRIPTED_LLM_LATENCY_MS"


def _latency(text: str) -> tuple[int, int]:
    try:
        return parse_latency_range(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``STEPBUS_SCRIPTED_LLM_LATENCY_MS`` is the latency default."""
    parser = argparse.ArgumentParser(
        prog="python -m stepbus_devtools.scripted_llm",
        description="Deterministic test double of an OpenAI-compatible chat API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument(
        "--latency-ms",
        type=_latency,
        default=os.environ.get(LATENCY_ENV, "0"),
        help=f"latency per completion, '200' or '50-300' (default: ${LATENCY_ENV} or 0)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Announce what this is on stderr, then serve until interrupted."""
    args = parse_args(argv)
    lo, hi = args.latency_ms
    print(
        "stepbus scripted LLM: a DETERMINISTIC TEST DOUBLE of an OpenAI-compatible API, "
        f"not a real model; serving http://{args.host}:{args.port}/v1 "
        f"with {lo}-{hi} ms latency",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(create_app(args.latency_ms), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
