"""stepbus gateway: accepts tasks over HTTP, publishes them, streams their progress over SSE."""

from .app import create_app
from .settings import GatewaySettings

__all__ = ["GatewaySettings", "create_app"]
