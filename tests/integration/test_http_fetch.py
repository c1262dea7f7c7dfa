"""The ``http_fetch`` tool against a real HTTP server (uvicorn + Starlette on 127.0.0.1): pages
returned as text, limits applied, redirects followed and re-checked, and private addresses,
odd URLs, slow and absent servers refused with the error the model should get."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from ipaddress import IPv4Address
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from stepbus_tool_executor import http_fetch
from stepbus_tool_executor.http_fetch import FetchLimits, HostCheck, http_fetch_tool
from stepbus_tool_executor.registry import (
    CallContext,
    Tool,
    ToolFailedError,
    ToolInputError,
    ToolUnavailableError,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
CALL = CallContext("task-web:0:0", "task-web", "acme")


@pytest.fixture(scope="module", autouse=True)
def _delete_scratch_topics() -> None:
    """No Kafka here: this replaces the integration tier's topic cleanup (and its broker)."""


# -- the server --------------------------------------------------------------------------------


async def text(request: Request) -> Response:
    return PlainTextResponse("hello from the test server")


async def json_page(request: Request) -> Response:
    return JSONResponse({"city": "Zürich", "temperature_c": 21})


async def missing(request: Request) -> Response:
    return PlainTextResponse("no such page", status_code=404)


async def big(request: Request) -> Response:
    return PlainTextResponse("é" * int(request.query_params["chars"]))


async def latin1(request: Request) -> Response:
    return Response("café".encode("latin-1"), media_type="text/plain; charset=iso-8859-1")


async def image(request: Request) -> Response:
    return Response(PNG, media_type="image/png")


async def redirect(request: Request) -> Response:
    return RedirectResponse(request.query_params["to"], status_code=302)


async def loop(request: Request) -> Response:
    return RedirectResponse(f"/loop/{int(request.path_params['n']) + 1}", status_code=307)


async def slow(request: Request) -> Response:
    await asyncio.sleep(3)
    return PlainTextResponse("too late")


async def headers(request: Request) -> Response:
    return JSONResponse(dict(request.headers))


APP = Starlette(
    routes=[
        Route("/text", text),
        Route("/json", json_page),
        Route("/missing", missing),
        Route("/big", big),
        Route("/latin1", latin1),
        Route("/image", image),
        Route("/redirect", redirect),
        Route("/loop/{n}", loop),
        Route("/slow", slow),
        Route("/headers", headers),
    ]
)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """The port of the test server, running in a thread of its own until the module ends."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(APP, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:  # readiness polled
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


@pytest.fixture
def fetch(client: httpx.AsyncClient, port: int) -> Callable[..., Tool]:
    """A tool with the given limits (private addresses allowed unless said otherwise)."""

    def make(**limits: Any) -> Tool:
        return http_fetch_tool(FetchLimits(**{"allow_private": True, **limits}), client)

    return make


class PolicedCall(CallContext):
    """A call context carrying the allowed-host check the executor will attach."""

    permits: HostCheck

    def __new__(cls, idempotency_key: str, permits: HostCheck) -> PolicedCall:
        call = super().__new__(cls, idempotency_key, "task-web", "acme")
        call.permits = permits
        return call


# -- pages -------------------------------------------------------------------------------------


async def test_a_text_page_comes_back_with_its_status_and_content_type(
    fetch: Callable[..., Tool], port: int
) -> None:
    output = await fetch().run({"url": f"http://127.0.0.1:{port}/text"}, CALL)

    assert output == "HTTP 200 text/plain; charset=utf-8\n\nhello from the test server"


async def test_a_json_page_is_text(fetch: Callable[..., Tool], port: int) -> None:
    output = await fetch().run({"url": f"http://127.0.0.1:{port}/json"}, CALL)

    assert output == 'HTTP 200 application/json\n\n{"city":"Zürich","temperature_c":21}'


async def test_an_error_status_is_a_result_for_the_model_not_an_exception(
    fetch: Callable[..., Tool], port: int
) -> None:
    output = await fetch().run({"url": f"http://127.0.0.1:{port}/missing"}, CALL)

    assert output == "HTTP 404 text/plain; charset=utf-8\n\nno such page"


async def test_the_body_is_decoded_with_the_charset_the_response_names(
    fetch: Callable[..., Tool], port: int
) -> None:
    output = await fetch().run({"url": f"http://127.0.0.1:{port}/latin1"}, CALL)

    assert output.endswith("\n\ncafé")


async def test_a_body_above_max_bytes_is_cut_and_says_so(
    fetch: Callable[..., Tool], port: int
) -> None:
    # 2,000 "é" are 4,000 bytes; 1,001 bytes end inside a character, which is dropped.
    output = await fetch(max_bytes=1001).run(
        {"url": f"http://127.0.0.1:{port}/big?chars=2000"}, CALL
    )

    head, body = output.split("\n\n", 1)
    assert head == "HTTP 200 text/plain; charset=utf-8"
    assert body == "é" * 500 + "\n\n[truncated at 1001 bytes]"


async def test_a_body_of_exactly_max_bytes_is_whole(fetch: Callable[..., Tool], port: int) -> None:
    output = await fetch(max_bytes=1000).run(
        {"url": f"http://127.0.0.1:{port}/big?chars=500"}, CALL
    )

    assert output.endswith("\n\n" + "é" * 500)


async def test_binary_content_is_described_not_shown(fetch: Callable[..., Tool], port: int) -> None:
    output = await fetch().run({"url": f"http://127.0.0.1:{port}/image"}, CALL)

    assert output == f"HTTP 200 image/png\n\nbinary content (image/png, {len(PNG)} bytes) not shown"


async def test_the_request_names_the_tool_and_carries_the_idempotency_key(
    fetch: Callable[..., Tool], port: int
) -> None:
    output = await fetch().run({"url": f"http://127.0.0.1:{port}/headers"}, CALL)

    assert '"user-agent":"stepbus-http-fetch/1"' in output
    assert '"idempotency-key":"task-web:0:0"' in output


async def test_the_shared_client_is_used_when_none_is_given(port: int) -> None:
    tool = http_fetch_tool(FetchLimits(allow_private=True))
    try:
        output = await tool.run({"url": f"http://127.0.0.1:{port}/text"}, CALL)
    finally:
        await http_fetch.aclose_shared_client()

    assert output.startswith("HTTP 200 ")


# -- redirects ---------------------------------------------------------------------------------


async def test_a_redirect_is_followed_and_each_url_is_checked(
    fetch: Callable[..., Tool], port: int
) -> None:
    checked: list[str] = []

    def permits(url: str) -> str | None:
        checked.append(url)
        return None

    base = f"http://127.0.0.1:{port}"
    output = await fetch().run({"url": f"{base}/redirect?to=/json"}, PolicedCall("k", permits))

    assert output.startswith("HTTP 200 application/json\n\n")
    assert checked == [f"{base}/redirect?to=/json", f"{base}/json"]


async def test_a_redirect_the_policy_refuses_is_not_followed(
    fetch: Callable[..., Tool], port: int
) -> None:
    base = f"http://127.0.0.1:{port}"

    def permits(url: str) -> str | None:
        return "not on the allowed list" if url == f"{base}/json" else None

    with pytest.raises(ToolFailedError) as refused:
        await fetch().run({"url": f"{base}/redirect?to=/json"}, PolicedCall("k", permits))

    assert str(refused.value) == f"redirect to {base}/json refused: not on the allowed list"


async def test_a_first_url_the_policy_refuses_is_the_models_to_change(
    fetch: Callable[..., Tool], port: int
) -> None:
    call = PolicedCall("k", lambda url: "127.0.0.1 is not an allowed host")

    with pytest.raises(ToolInputError, match=r"^refused: 127\.0\.0\.1 is not an allowed host$"):
        await fetch().run({"url": f"http://127.0.0.1:{port}/text"}, call)


async def test_too_many_redirects_fail(fetch: Callable[..., Tool], port: int) -> None:
    with pytest.raises(
        ToolFailedError, match=r"^more than 3 redirects; the last one was to .*/loop/4$"
    ):
        await fetch(max_redirects=3).run({"url": f"http://127.0.0.1:{port}/loop/0"}, CALL)


async def test_a_redirect_to_another_scheme_is_refused(
    fetch: Callable[..., Tool], port: int
) -> None:
    with pytest.raises(ToolFailedError, match=r"^redirect to file:/+etc/passwd refused: only http"):
        await fetch().run({"url": f"http://127.0.0.1:{port}/redirect?to=file:///etc/passwd"}, CALL)


# -- addresses ---------------------------------------------------------------------------------


async def test_the_loopback_server_is_refused_when_private_addresses_are_not_allowed(
    fetch: Callable[..., Tool], port: int
) -> None:
    tool = fetch(allow_private=False)

    with pytest.raises(ToolInputError, match=r"^refused: 127\.0\.0\.1 is a loopback address"):
        await tool.run({"url": f"http://127.0.0.1:{port}/text"}, CALL)
    with pytest.raises(ToolInputError, match=r"^refused: localhost resolves to .*, a loopback"):
        await tool.run({"url": f"http://localhost:{port}/text"}, CALL)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://10.1.2.3/", "private"),
        ("http://192.168.0.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),  # cloud metadata
        ("http://0.0.0.0/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://[::1]/", "loopback"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),  # IPv4-mapped
        ("http://[64:ff9b::a00:1]/", "private"),  # 10.0.0.1 behind NAT64
        ("http://2130706433/", "loopback"),  # 127.0.0.1 as one number
        ("http://100.64.0.1/", "non-public"),  # carrier-grade NAT
    ],
)
async def test_non_public_addresses_are_refused(
    fetch: Callable[..., Tool], url: str, kind: str
) -> None:
    with pytest.raises(ToolInputError, match=rf"^refused: .* {kind} address"):
        await fetch(allow_private=False).run({"url": url}, CALL)


async def test_a_redirect_to_a_private_address_is_refused(
    fetch: Callable[..., Tool], port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    public = http_fetch._address_kind
    # The test server stands in for a public one; every other address is judged as usual.
    monkeypatch.setattr(
        http_fetch, "_address_kind", lambda ip: None if str(ip) == "127.0.0.1" else public(ip)
    )

    with pytest.raises(ToolFailedError, match=r"refused: 10\.0\.0\.1 is a private address"):
        await fetch(allow_private=False).run(
            {"url": f"http://127.0.0.1:{port}/redirect?to=http://10.0.0.1/"}, CALL
        )


async def test_the_connection_goes_to_the_checked_address_with_the_host_name_kept(
    fetch: Callable[..., Tool], port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "rebind.test" resolves (for the check only) to a server-less loopback address, then to
    # the test server's, both judged public here. The system resolver does not know the name:
    # the fetch works only if it connects to the addresses checked, the next when one refuses.
    async def resolve(host: str, port: int) -> list[IPv4Address]:
        assert host == "rebind.test"
        return [IPv4Address("127.0.0.2"), IPv4Address("127.0.0.1")]

    monkeypatch.setattr(http_fetch, "_resolve", resolve)
    monkeypatch.setattr(http_fetch, "_address_kind", lambda ip: None)

    output = await fetch(allow_private=False).run(
        {"url": f"http://rebind.test:{port}/headers"}, CALL
    )

    assert output.startswith("HTTP 200 application/json")
    assert f'"host":"rebind.test:{port}"' in output


async def test_a_host_that_does_not_exist_is_the_models_to_change(
    fetch: Callable[..., Tool], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def resolve(host: str, port: int) -> list[IPv4Address]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(http_fetch, "_resolve", resolve)

    with pytest.raises(ToolInputError, match=r"^refused: nowhere\.example does not resolve"):
        await fetch(allow_private=False).run({"url": "http://nowhere.example/"}, CALL)


async def test_a_failing_resolver_is_unavailable(
    fetch: Callable[..., Tool], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def resolve(host: str, port: int) -> list[IPv4Address]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(http_fetch, "_resolve", resolve)

    with pytest.raises(ToolUnavailableError, match=r"^could not resolve example\.com: .*Temporary"):
        await fetch(allow_private=False).run({"url": "http://example.com/"}, CALL)


# -- URLs and servers the tool refuses -----------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"url": "ftp://example.com/file"},
            "refused: only http and https URLs can be fetched, not ftp:",
        ),
        (
            {"url": "file:///etc/passwd"},
            "refused: only http and https URLs can be fetched, not file:",
        ),
        ({"url": "https://user:secret@example.com/"}, "refused: URLs with a user name or password"),
        ({"url": "example.com"}, "refused: only http and https URLs can be fetched, not a URL"),
        ({"url": "http:///path"}, "refused: http:/path has no host"),
        ({"url": ""}, 'http_fetch needs exactly {"url": "<http(s) URL>"}'),
        ({"url": "https://example.com", "method": "POST"}, "http_fetch needs exactly"),
        ({}, "http_fetch needs exactly"),
    ],
)
async def test_urls_it_will_not_fetch_are_the_models_to_change(
    fetch: Callable[..., Tool], arguments: dict[str, object], message: str
) -> None:
    tool = fetch()
    assert tool.check is not None

    with pytest.raises(ToolInputError) as checked:
        tool.check(arguments)
    with pytest.raises(ToolInputError) as ran:
        await tool.run(arguments, CALL)

    assert str(checked.value).startswith(message)
    assert str(ran.value) == str(checked.value)


async def test_a_slow_server_times_out_as_unavailable(
    fetch: Callable[..., Tool], port: int
) -> None:
    started = time.monotonic()

    with pytest.raises(ToolUnavailableError, match=r"took longer than 0\.3s"):
        await fetch(timeout_seconds=0.3).run({"url": f"http://127.0.0.1:{port}/slow"}, CALL)

    assert time.monotonic() - started < 2


async def test_a_port_nobody_listens_on_is_unavailable(fetch: Callable[..., Tool]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # bound, never listening: connections are refused

        with pytest.raises(ToolUnavailableError, match=r"^could not connect to 127\.0\.0\.1"):
            await fetch().run({"url": f"http://127.0.0.1:{closed}/"}, CALL)


async def test_the_tool_describes_itself_to_the_model() -> None:
    tool = http_fetch_tool(FetchLimits())

    assert (tool.name, tool.source) == ("http_fetch", "builtin")
    assert tool.parameters == {
        "type": "object",
        "properties": {"url": {"type": "string", "description": "http(s) URL to GET"}},
        "required": ["url"],
        "additionalProperties": False,
    }
    assert "1,000,000 bytes" in tool.description
