"""``python -m stepbus_critic``."""

import asyncio

from .app import main

asyncio.run(main())
