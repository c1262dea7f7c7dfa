"""Real MCP servers the tests start (written with the ``mcp`` package's server side)."""
