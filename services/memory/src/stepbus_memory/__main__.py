"""``python -m stepbus_memory``."""

import asyncio

from .app import main

asyncio.run(main())
