"""The ``http_fetch`` built-in tool: GET an http(s) URL for the model, within limits.

Every URL the tool is about to fetch (the first and each redirect target) is checked: its
scheme, the call's allowed-host policy (``call.permits``), and every address its host resolves
to (private, loopback, link-local, reserved, multicast and unspecified addresses are refused
unless ``allow_private``). The connection then goes to an address that was checked, with the
host name kept in ``Host`` and TLS SNI, so a DNS answer that changes between the check and the
connect (DNS rebinding) cannot reach the internal network.

The model reads the result, so an HTTP error status is a result too; only a fetch that could
not happen is an error (``ToolInputError`` for a URL the model should change, ``ToolFailedError``
for a refused redirect, ``ToolUnavailableError`` when the server cannot be reached in time).
"""

from __future__ import annotations

import asyncio
import codecs
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from .registry import CallContext, Tool, ToolFailedError, ToolInputError, ToolUnavailableError

__all__ = [
    "NAME",
    "PARAMETERS",
    "USER_AGENT",
    "FetchLimits",
    "HostCheck",
    "aclose_shared_client",
    "http_fetch_tool",
]

NAME = "http_fetch"
USER_AGENT = "stepbus-http-fetch/1"
PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"url": {"type": "string", "description": "http(s) URL to GET"}},
    "required": ["url"],
    "additionalProperties": False,
}

HostCheck = Callable[[str], str | None]
"""Called with each URL about to be fetched (the first and every redirect target): returns None
when allowed, or the reason it is not (the tool-executor asks its policy)."""


@dataclass(frozen=True)
class FetchLimits:
    """What one ``http_fetch`` call may do."""

    max_bytes: int = 1_000_000
    """Body bytes read at most; a larger body is cut and the result says so
    (``[truncated at N bytes]``)."""
    timeout_seconds: float = 10.0
    """The whole fetch, redirects and name resolution included."""
    max_redirects: int = 5
    allow_private: bool = False
    """Fetch private, loopback, link-local, reserved, multicast and unspecified addresses too."""


def http_fetch_tool(limits: FetchLimits, client: httpx.AsyncClient | None = None) -> Tool:
    """The ``http_fetch`` tool.

    Args:
        limits: Size, time and address limits of every call.
        client: The HTTP client to send with (its redirects are not followed: the tool follows
            them itself). By default one shared by the process, which ignores proxy settings
            from the environment and keeps no cookies; a client given here should not keep
            cookies either, or one tenant's session could be sent on another's fetch.
    """
    fetch = _Fetch(limits, client)
    return Tool(
        name=NAME,
        description=(
            "Fetch a public web page or API with an HTTP GET. Returns the status line, the "
            f"content type and the body as text (at most {limits.max_bytes:,} bytes; binary "
            "content is described, not shown). Redirects are followed."
        ),
        parameters=PARAMETERS,
        run=fetch.run,
        source="builtin",
        check=_check_arguments,
        idempotent=True,  # a GET: a repeat after an unexpected error is harmless
    )


async def aclose_shared_client() -> None:
    """Close the client shared by the tools made without one (at shutdown)."""
    global _shared
    if _shared is not None:
        _, client = _shared
        _shared = None
        await client.aclose()


_shared: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None


def _shared_client() -> httpx.AsyncClient:
    """The process's client, made on first use (again if the event loop changed)."""
    global _shared
    loop = asyncio.get_running_loop()
    if _shared is None or _shared[0] is not loop or _shared[1].is_closed:
        client = httpx.AsyncClient(
            trust_env=False,  # no proxies or .netrc credentials from the environment
            limits=httpx.Limits(max_connections=32),
            follow_redirects=False,
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),  # shared by all tenants
        )
        _shared = (loop, client)
    return _shared[1]


def _check_arguments(arguments: dict[str, Any]) -> None:
    _url(arguments)


def _url(arguments: dict[str, Any]) -> httpx.URL:
    """The URL to fetch, or ``ToolInputError`` saying what is wrong with the arguments."""
    raw = arguments.get("url")
    if not isinstance(raw, str) or not raw.strip() or set(arguments) != {"url"}:
        raise ToolInputError('http_fetch needs exactly {"url": "<http(s) URL>"}')
    try:
        url = httpx.URL(raw.strip())
    except httpx.InvalidURL as exc:
        raise ToolInputError(f"not a valid URL: {raw!r} ({exc})") from None
    refusal = _shape_refusal(url)
    if refusal is not None:
        raise ToolInputError(f"refused: {refusal}")
    return url


def _shape_refusal(url: httpx.URL) -> str | None:
    if url.scheme not in ("http", "https"):
        scheme = f"{url.scheme}:" if url.scheme else "a URL without a scheme"
        return f"only http and https URLs can be fetched, not {scheme}"
    if not url.host:
        return f"{url} has no host"
    if url.userinfo:
        return "URLs with a user name or password are not fetched"
    return None


_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TEXT_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/ecmascript",
        "application/x-javascript",
        "application/yaml",
        "application/x-yaml",
        "application/toml",
        "application/x-ndjson",
        "application/graphql",
        "application/sql",
        "application/csv",
        "application/x-www-form-urlencoded",
        "application/xhtml+xml",
    }
)


class _Fetch:
    def __init__(self, limits: FetchLimits, client: httpx.AsyncClient | None) -> None:
        self._limits = limits
        self._client = client

    async def run(self, arguments: dict[str, Any], call: CallContext) -> str:
        url = _url(arguments)
        permits = getattr(call, "permits", None)
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        key = getattr(call, "idempotency_key", None)
        if isinstance(key, str) and key:
            headers["Idempotency-Key"] = key
        seconds = self._limits.timeout_seconds
        try:
            async with asyncio.timeout(seconds):
                return await self._follow(url, permits if callable(permits) else None, headers)
        except (TimeoutError, httpx.TimeoutException):
            raise ToolUnavailableError(f"fetching {url} took longer than {seconds:g}s") from None

    async def _follow(
        self, url: httpx.URL, permits: HostCheck | None, headers: dict[str, str]
    ) -> str:
        for hop in range(self._limits.max_redirects + 1):
            refusal = _shape_refusal(url) or (permits(str(url)) if permits else None)
            addresses: list[_IP] = []
            if refusal is None and not self._limits.allow_private:
                addresses, refusal = await _public_addresses(url)
            if refusal is not None:
                if hop == 0:
                    raise ToolInputError(f"refused: {refusal}")
                raise ToolFailedError(f"redirect to {url} refused: {refusal}")
            response = await self._send(url, addresses, headers)
            try:
                location = response.headers.get("location")
                if response.status_code not in _REDIRECTS or not location:
                    return await self._result(response)
            finally:
                await response.aclose()
            try:
                url = url.join(location).copy_with(fragment=None)
            except httpx.InvalidURL:
                raise ToolFailedError(f"{url} redirects to an invalid URL: {location!r}") from None
        raise ToolFailedError(
            f"more than {self._limits.max_redirects} redirects; the last one was to {url}"
        )

    async def _send(
        self, url: httpx.URL, addresses: list[_IP], headers: dict[str, str]
    ) -> httpx.Response:
        """The response (body not read yet) from the first of ``addresses`` that answers; from
        wherever the client connects when there are none (a literal IP, or private allowed)."""
        client = self._client or _shared_client()
        targets: list[tuple[httpx.URL, dict[str, str], dict[str, Any]]] = [(url, headers, {})]
        if addresses:
            host = url.raw_host.decode("ascii")
            pinned = {**headers, "Host": url.netloc.decode("ascii")}
            sni = {"sni_hostname": host} if url.scheme == "https" else {}
            targets = [(url.copy_with(host=str(ip)), pinned, sni) for ip in addresses]
        failure: httpx.TransportError | None = None
        for target, target_headers, extensions in targets:
            request = client.build_request(
                "GET",
                target,
                headers=target_headers,
                timeout=self._limits.timeout_seconds,
                extensions=extensions,
            )
            try:
                return await client.send(request, stream=True, follow_redirects=False)
            except httpx.ConnectError as exc:
                failure = exc  # the next address may answer
            except httpx.TimeoutException:
                raise
            except httpx.TransportError as exc:
                raise ToolUnavailableError(f"fetching {url} failed: {_reason(exc)}") from None
        assert failure is not None
        raise ToolUnavailableError(f"could not connect to {url.host}: {_reason(failure)}")

    async def _result(self, response: httpx.Response) -> str:
        content_type = response.headers.get("content-type", "")
        media_type = content_type.partition(";")[0].strip().lower()
        status = f"HTTP {response.status_code} {content_type or '(no content type)'}"
        if media_type and not _is_text(media_type):
            return f"{status}\n\n{await self._binary(response, media_type)}"
        try:
            body, truncated = await self._read(response)
        except httpx.DecodingError as exc:
            raise ToolFailedError(f"the body could not be decoded: {_reason(exc)}") from None
        except httpx.TimeoutException:
            raise
        except httpx.TransportError as exc:
            raise ToolUnavailableError(f"reading the body failed: {_reason(exc)}") from None
        if not media_type and b"\x00" in body[:1024]:
            size = f"more than {len(body)}" if truncated else str(len(body))
            return f"{status}\n\nbinary content ({size} bytes) not shown"
        text = _decode(body, response.charset_encoding, final=not truncated)
        if truncated:
            text += f"\n\n[truncated at {self._limits.max_bytes} bytes]"
        return f"{status}\n\n{text}"

    async def _read(self, response: httpx.Response) -> tuple[bytes, bool]:
        """At most ``max_bytes`` of the body, and whether there was more."""
        limit = self._limits.max_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(chunks)[:limit], True
        return b"".join(chunks), False

    async def _binary(self, response: httpx.Response, media_type: str) -> str:
        length = response.headers.get("content-length", "")
        if length.isdigit() and "content-encoding" not in response.headers:
            size = length
        else:
            try:
                body, truncated = await self._read(response)
            except httpx.HTTPError:
                size = "unknown"
            else:
                size = f"more than {len(body)}" if truncated else str(len(body))
        return f"binary content ({media_type}, {size} bytes) not shown"


def _is_text(media_type: str) -> bool:
    return (
        media_type.startswith("text/")
        or media_type in _TEXT_TYPES
        or media_type.endswith(("+json", "+xml", "+yaml"))
    )


def _decode(body: bytes, charset: str | None, final: bool) -> str:
    """``body`` as text in ``charset`` (UTF-8 when absent or unknown); with ``final`` false, a
    character cut at the end by truncation is dropped rather than shown as garbage."""
    try:
        decoder = codecs.getincrementaldecoder(charset or "utf-8")(errors="replace")
    except LookupError:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return decoder.decode(body, final=final)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# -- addresses ---------------------------------------------------------------------------------

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_PUBLIC_ONLY = " (only public addresses are fetched)"
_NO_SUCH_HOST = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


async def _public_addresses(url: httpx.URL) -> tuple[list[_IP], str | None]:
    """The addresses ``url``'s host resolves to, or the reason one of them may not be fetched.

    A literal IP comes back as no addresses (nothing to pin: the client connects to it).
    """
    host = url.host
    try:
        literal: _IP | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        kind = _address_kind(literal)
        return [], None if kind is None else f"{host} is {_a(kind)} address{_PUBLIC_ONLY}"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        addresses = await _resolve(url.raw_host.decode("ascii"), port)
    except socket.gaierror as exc:
        if exc.errno in _NO_SUCH_HOST:
            return [], f"{host} does not resolve (no such host)"
        raise ToolUnavailableError(f"could not resolve {host}: {_reason(exc)}") from None
    except (OSError, UnicodeError) as exc:
        raise ToolUnavailableError(f"could not resolve {host}: {_reason(exc)}") from None
    for address in addresses:
        kind = _address_kind(address)
        if kind is not None:
            return [], f"{host} resolves to {address}, {_a(kind)} address{_PUBLIC_ONLY}"
    return addresses, None


async def _resolve(host: str, port: int) -> list[_IP]:
    """The addresses ``host`` resolves to, in the resolver's order of preference."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[_IP] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])  # no IPv6 scope
        if address not in addresses:
            addresses.append(address)
    return addresses


def _address_kind(address: _IP) -> str | None:
    """Why ``address`` is not a public one to fetch from (``"loopback"``...), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address in _NAT64:  # the IPv4 address behind a NAT64 gateway
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    for kind, flag in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),  # before private, which includes 240.0.0.0/4
        ("private", address.is_private),
    ):
        if flag:
            return kind
    return None if address.is_global else "non-public"


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
