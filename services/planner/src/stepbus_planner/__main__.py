"""``python -m stepbus_planner``."""

import asyncio

from .app import main

asyncio.run(main())
