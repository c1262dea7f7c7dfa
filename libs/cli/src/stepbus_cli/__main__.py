"""``python -m stepbus_cli``."""

from .app import main

main()
