"""Errors of the gateway; an ``ApiError`` becomes the HTTP response it describes."""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "ClientGone", "GatewayError"]


class GatewayError(Exception):
    """Root of every error raised by the gateway."""


class ApiError(GatewayError):
    """A request the gateway answers with ``status`` and ``{"error": {"message", "details"}}``.

    4xx: the caller must change the request; 429 and 503: the caller may retry the same request
    later, after ``retry_after`` seconds when given (the ``Retry-After`` header); a 401 with
    ``challenge`` names the scheme (``WWW-Authenticate: Bearer``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        details: list[dict[str, Any]] | None = None,
        *,
        retry_after: int | None = None,
        challenge: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.retry_after = retry_after
        self.challenge = challenge

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        error: dict[str, Any] = {"message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}

    def headers(self) -> dict[str, str]:
        """The response headers the error needs."""
        headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        if self.challenge:
            headers["WWW-Authenticate"] = 'Bearer realm="stepbus"'
        return headers


class ClientGone(GatewayError):
    """The client went away before sending its whole request body: nobody to answer."""

    def __init__(self, received: int, declared: int | None) -> None:
        super().__init__(f"client disconnected after {received} of {declared} body bytes")
        self.received = received
        self.declared = declared
