"""A deterministic stand-in for an OpenAI-compatible chat model (the offline demo and tests).

``create_app`` serves the OpenAI Chat Completions API; ``next_turn`` is the pure script behind
it. Run it with ``python -m stepbus_devtools.scripted_llm``.
"""

from stepbus_devtools.scripted_llm.script import (
    CALCULATOR,
    Directives,
    ToolCall,
    Turn,
    Usage,
    conversation_hash,
    extract_expressions,
    next_turn,
    parse_latency_range,
    read_directives,
)
from stepbus_devtools.scripted_llm.server import MODEL_ID, TEST_DOUBLE_HEADER, create_app

__all__ = [
    "CALCULATOR",
    "MODEL_ID",
    "TEST_DOUBLE_HEADER",
    "Directives",
    "ToolCall",
    "Turn",
    "Usage",
    "conversation_hash",
    "create_app",
    "extract_expressions",
    "next_turn",
    "parse_latency_range",
    "read_directives",
]
