"""The task timeline page under ``/ui/`` in a real headless Chromium, on the policy stack (every
service a process, a real stdio MCP server whose ``desk__write`` needs the ``ops`` role's
approval): a person signs in with an API key, sees the task listed, follows its steps live,
is refused without the role, approves with it and sees the answer; another tenant's key sees
neither the task in the list nor its timeline.

Chromium is driven over the DevTools protocol directly (a websocket), so no driver or browser
download is needed: only Debian's ``chromium``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from ..harness import LOGS, REPO, wait_until
from .conftest import Stack
from .test_policy import stack  # noqa: F401  (the module-scoped policy stack)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="needs chromium (apt-get install chromium)"
    ),
]

SHOTS = LOGS / "ui"
OPS_KEY = "test-key-acme-ops-0123456789"
NO_ROLE_KEY = "test-key-acme-0123456789"
OTHER_TENANT_KEY = "test-key-globex-0123456789"
DEVTOOLS = re.compile(r"DevTools listening on (ws://\S+)")


def _spawn_chromium(run: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Headless Chromium with a fresh profile, its DevTools on a free port (said in its log)."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
             "--remote-debugging-port=0", f"--user-data-dir={run / 'profile'}",
             "--window-size=1200,1000", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )  # fmt: skip


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


class Page:
    """One headless Chromium tab, driven over the Chrome DevTools Protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls) -> AsyncIterator[Page]:
        """Start Chromium with a fresh profile and open one page in it."""
        run = SHOTS / f"chromium-{uuid.uuid4().hex[:6]}"
        run.mkdir(parents=True, exist_ok=True)
        log_path = run / "chromium.log"
        process = _spawn_chromium(run, log_path)
        try:

            def devtools_url() -> str | None:
                if process.poll() is not None:
                    raise RuntimeError(f"chromium exited:\n{log_path.read_text()[-2000:]}")
                found = DEVTOOLS.search(log_path.read_text(errors="replace"))
                return found.group(1) if found else None

            browser_url = await wait_until(devtools_url, 60, "chromium's DevTools", 0.1)
            port = re.search(r":(\d+)/", browser_url).group(1)  # type: ignore[union-attr]
            async with aiohttp.ClientSession() as http:
                async with http.put(f"http://127.0.0.1:{port}/json/new?about:blank") as response:
                    target = await response.json()
                async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    page = cls(ws)
                    try:
                        await page.send("Runtime.enable")
                        await page.send("Page.enable")
                        await page.send(
                            "Emulation.setDeviceMetricsOverride",
                            width=1200, height=1000, deviceScaleFactor=1, mobile=False,
                        )  # fmt: skip
                        yield page
                    finally:
                        page._reader.cancel()
        finally:
            _stop(process)

    async def _read(self) -> None:
        async for message in self._ws:
            data = json.loads(message.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in args)
                )
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console.append(json.dumps(data["params"]["exceptionDetails"])[:2000])

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a DevTools command and return its result (fails on a protocol error)."""
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        await self._ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        answer = await asyncio.wait_for(future, 30)
        if "error" in answer:
            raise RuntimeError(f"{method} failed: {answer['error']}")
        result: dict[str, Any] = answer["result"]
        return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete' && !!window.route", "the page")

    async def wait_for(self, expression: str, what: str, timeout: float = 60) -> Any:
        """Poll a JavaScript expression until it is truthy; on timeout say what the page showed."""
        try:
            return await wait_until(lambda: self.evaluate(expression), timeout, what, 0.2)
        except TimeoutError as exc:
            text = await self.text()
            raise TimeoutError(f"{exc}\n--- page text:\n{text}\n--- console:\n"
                               + "\n".join(self.console[-20:])) from None  # fmt: skip

    async def text(self, selector: str = "body") -> str:
        """The rendered text of the first element matching ``selector`` ('' if none)."""
        value = await self.evaluate(
            f"(document.querySelector({json.dumps(selector)}) || {{innerText: ''}}).innerText"
        )
        return str(value or "")

    async def click(self, selector: str) -> None:
        await self.wait_for(
            f"(e => e && !e.disabled && e.offsetParent !== null)"
            f"(document.querySelector({json.dumps(selector)}))",
            f"{selector} to be clickable",
        )
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    async def sign_in(self, key: str) -> None:
        if await self.evaluate("!document.getElementById('logout').hidden"):
            await self.click("#logout")
        await self.wait_for("!document.getElementById('login-view').hidden", "the sign-in form")
        await self.evaluate(f"document.getElementById('api-key').value = {json.dumps(key)}")
        await self.click("#login")
        await self.wait_for("document.getElementById('login-view').hidden", "signed in")

    async def screenshot(self, name: str) -> Path:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path = SHOTS / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def js_text_of(selector: str) -> str:
    return f"(document.querySelector({json.dumps(selector)}) || {{innerText: ''}}).innerText"


async def test_the_timeline_follows_a_task_live_through_its_approval_and_hides_it_from_others(
    stack: Stack,  # noqa: F811
) -> None:
    assert stack.gateway_url is not None
    SHOTS.mkdir(parents=True, exist_ok=True)
    text = 'Note it [tool=desk__write] {"path": "/notes/ui.txt", "text": "from the ui"}'
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as http:
        submitted = await http.post(
            "/v1/tasks",
            headers={"Authorization": f"Bearer {OPS_KEY}"},
            json={"input": text, "tools": ["desk__write"], "critic": {"enabled": False}},
        )
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["task_id"]
    row = f"tr[data-task-id={json.dumps(task_id)}]"
    task_url = f"{stack.gateway_url}/ui/#/tasks/{task_id}"

    async with Page.launch() as page:
        await page.navigate(f"{stack.gateway_url}/ui")  # redirected to /ui/
        assert await page.evaluate("location.pathname") == "/ui/"
        await page.sign_in(OPS_KEY)
        await page.wait_for(f"!!document.querySelector({json.dumps(row)})", "the task listed")
        listed = await page.text(row)
        assert task_id in listed and re.search(r"\d+ s ago|min ago", listed), listed
        await page.screenshot("1-list")

        await page.click(f"{row} a")
        await page.wait_for(f"location.hash === {json.dumps('#/tasks/' + task_id)}", "task view")
        assert await page.text("#task-id") == task_id
        await page.wait_for(
            f"{js_text_of('#timeline')}.includes('approval waiting')", "the approval waiting"
        )
        timeline = await page.text("#timeline")
        assert "accepted" in timeline and "action · desk__write" in timeline, timeline
        assert "needs role ops" in timeline, timeline
        assert await page.evaluate("document.getElementById('timeline').ariaLive") == "polite"
        # The task's trace id links to the configured trace viewer.
        href = await page.evaluate("document.querySelector('#timeline a.trace').href")
        assert re.fullmatch(r"http://jaeger\.test:16686/trace/[0-9a-f]{32}", href), href
        await page.screenshot("2-waiting")

        # A key of the tenant without the role: the gateway refuses, the page says why.
        await page.sign_in(NO_ROLE_KEY)
        await page.wait_for(js_text_of("#timeline") + ".includes('approval waiting')", "again")
        await page.click("#timeline button.approve")
        await page.wait_for(f"{js_text_of('.decision')}.includes('403')", "the refusal shown")
        refusal = await page.text(".decision")
        assert "needs one of the roles" in refusal, refusal
        assert "completed" not in await page.text("#task-status")

        # The ops key approves; the task resumes and ends with the tool's word, live.
        await page.sign_in(OPS_KEY)
        await page.click("#timeline button.approve")
        await page.wait_for(
            f"{js_text_of('.event-task-completed .answer')} === 'wrote /notes/ui.txt'",
            "the answer",
            timeout=90,
        )
        await page.wait_for(f"{js_text_of('#task-status')} === 'completed'", "status completed")
        timeline = await page.text("#timeline")
        assert "approval approved" in timeline and "observation · desk__write" in timeline
        assert await page.evaluate(
            "[...document.querySelectorAll('#timeline button')].every(b => b.disabled)"
        ), "the decided approval still offers its buttons"
        final = await page.screenshot("3-completed")
        if os.environ.get("STEPBUS_UPDATE_SCREENSHOT"):  # refresh the README's screenshot
            shutil.copyfile(final, REPO / "docs" / "ui-timeline.png")

        # Another tenant: the task is neither listed nor shown.
        await page.evaluate("location.hash = '#/'")
        await page.sign_in(OTHER_TENANT_KEY)
        await page.wait_for(
            "!document.getElementById('no-tasks').hidden"
            " || document.querySelectorAll('#task-rows tr').length > 0",
            "the other tenant's list",
        )
        assert task_id not in await page.text("#list-view")
        await page.navigate(task_url)
        await page.wait_for("!document.getElementById('not-found').hidden", "not found shown")
        assert "not found" in (await page.text("#not-found")).lower()
        assert "wrote /notes/ui.txt" not in await page.text("body")
        await page.screenshot("4-other-tenant")
