"""The image's HEALTHCHECK: ``GET /healthz`` on the port the image's service listens on.

Standard library only (it runs in the final image, with whatever the service installed). The
service comes from ``STEPBUS_IMAGE_SERVICE`` (set by the Dockerfile) and its port from the same
variable the service reads, with the same default, so a moved port moves the check with it.
Exit 0: healthy; 1: not.
"""

from __future__ import annotations

import os
import sys
import urllib.request

# service -> (the variable its port is read from, its default, the path that answers 200)
ENDPOINTS: dict[str, tuple[str, int, str]] = {
    "gateway": ("STEPBUS_GATEWAY_PORT", 8080, "/healthz"),
    "planner": ("STEPBUS_PLANNER_METRICS_PORT", 9101, "/healthz"),
    "tool-executor": ("STEPBUS_TOOL_EXECUTOR_METRICS_PORT", 9102, "/healthz"),
    "memory": ("STEPBUS_MEMORY_METRICS_PORT", 9103, "/healthz"),
    "critic": ("STEPBUS_CRITIC_METRICS_PORT", 9104, "/healthz"),
    # the scripted LLM stand-in, run with `--port 8090` by docker-compose.yml
    "devtools": ("STEPBUS_SCRIPTED_LLM_PORT", 8090, "/v1/models"),
}


def url(service: str, environ: dict[str, str]) -> str:
    """The URL that answers 200 while ``service`` is healthy."""
    variable, default, path = ENDPOINTS[service]
    port = int(environ.get(variable) or default)
    return f"http://127.0.0.1:{port}{path}"


def main() -> int:
    service = os.environ.get("STEPBUS_IMAGE_SERVICE", "")
    if service not in ENDPOINTS:
        print(f"healthcheck: unknown STEPBUS_IMAGE_SERVICE {service!r}", file=sys.stderr)
        return 1
    target = url(service, dict(os.environ))
    try:
        with urllib.request.urlopen(target, timeout=4) as response:
            healthy = response.status == 200
    except OSError as error:
        print(f"healthcheck: {target}: {error}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
