"""The MCP servers file (STEPBUS_MCP_CONFIG) and the names its tools are published under."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from stepbus_tool_executor.mcp_config import (
    HttpServer,
    McpConfigError,
    StdioServer,
    load_mcp_config,
    tool_name,
)
from stepbus_tool_executor.settings import ToolExecutorSettings

OPENAI_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_stdio_and_http_servers_are_read(tmp_path: Path) -> None:
    config = load_mcp_config(
        write(
            tmp_path,
            {
                "mcpServers": {
                    "files": {"command": "python", "args": ["f.py"], "env": {"ROOT": "/d"}},
                    "search": {"url": "http://h/mcp", "headers": {"Authorization": "Bearer x"}},
                }
            },
        )
    )
    assert config.servers["files"] == StdioServer(
        command="python", args=["f.py"], env={"ROOT": "/d"}
    )
    assert config.servers["search"] == HttpServer(
        url="http://h/mcp", headers={"Authorization": "Bearer x"}
    )


@pytest.mark.parametrize(
    ("servers", "says"),
    [
        ({"files": {"args": []}}, "mcpServers.files: give either 'command' (stdio) or 'url'"),
        ({"both": {"command": "x", "url": "http://h"}}, "mcpServers.both: give either"),
        ({"files": {"command": "x", "args": "f.py"}}, "mcpServers.files.args"),
        ({"web": {"url": "ftp://h/mcp"}}, "mcpServers.web.url"),
        ({"files": {"command": "x", "extra": 1}}, "mcpServers.files.extra"),
        ({"bad name": {"command": "x"}}, "server name 'bad name'"),
        ({"a__b": {"command": "x"}}, "server name 'a__b'"),
        ({"x" * 33: {"command": "x"}}, "server name"),
    ],
)
def test_a_bad_file_names_the_server_and_field(
    tmp_path: Path, servers: dict[str, object], says: str
) -> None:
    with pytest.raises(McpConfigError, match=re.escape(says)):
        load_mcp_config(write(tmp_path, {"mcpServers": servers}))


def test_unreadable_json_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(McpConfigError, match="cannot read"):
        load_mcp_config(write(tmp_path, "{not json"))
    with pytest.raises(McpConfigError, match="cannot read"):
        load_mcp_config(tmp_path / "missing.json")


def test_tool_names_are_namespaced_and_sanitised() -> None:
    assert tool_name("files", "read_file") == "files__read_file"
    assert tool_name("files", "read.file v2") == "files__read_file_v2"
    assert tool_name("files", "x" * 57) == f"files__{'x' * 57}"  # 64 characters
    assert tool_name("files", "x" * 58) is None  # 65: cannot be offered to the model
    assert tool_name("files", "") is None
    for name in ("files__read_file", "files__read_file_v2"):
        assert OPENAI_NAME.match(name)


def test_the_setting_reads_stepbus_mcp_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPBUS_MCP_CONFIG", "/etc/stepbus/mcp.json")
    assert ToolExecutorSettings().mcp_config == "/etc/stepbus/mcp.json"
    monkeypatch.delenv("STEPBUS_MCP_CONFIG")
    assert ToolExecutorSettings().mcp_config is None
