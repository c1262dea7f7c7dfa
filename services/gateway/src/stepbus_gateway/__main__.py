"""``python -m stepbus_gateway``: serve the gateway on ``host:port``."""

from __future__ import annotations

import uvicorn
from stepbus_runtime import setup_telemetry, tune_gc

from .app import create_app
from .settings import GatewaySettings


def main() -> None:
    """Run the gateway until SIGTERM/SIGINT."""
    setup_telemetry("gateway")
    settings = GatewaySettings()
    app = create_app(settings)
    tune_gc()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep the logging setup_telemetry configured
        access_log=False,  # the gateway writes its own (access.py): one line, no secrets
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
    )


if __name__ == "__main__":
    main()
