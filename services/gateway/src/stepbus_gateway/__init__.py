"""stepbus gateway: HTTP in, Kafka out, progress over SSE."""
