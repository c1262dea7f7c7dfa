"""``python -m stepbus_planner [--shadow NAME]``."""

import argparse
import asyncio

from .app import main
from .settings import PlannerSettings

parser = argparse.ArgumentParser(prog="python -m stepbus_planner", description=__doc__)
parser.add_argument(
    "--shadow",
    metavar="NAME",
    help="run as the shadow planner NAME beside production (STEPBUS_PLANNER_SHADOW)",
)
arguments = parser.parse_args()
settings = PlannerSettings(**({"shadow": arguments.shadow} if arguments.shadow else {}))
if settings.shadow:
    from .replay.shadow import main as shadow_main

    asyncio.run(shadow_main(settings))
else:
    asyncio.run(main(settings))
