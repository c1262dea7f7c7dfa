"""``python -m stepbus_tool_executor``."""

import asyncio

from .app import main

asyncio.run(main())
