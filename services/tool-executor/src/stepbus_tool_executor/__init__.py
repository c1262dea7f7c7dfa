"""stepbus tool-executor: runs tool calls under idempotency keys."""
