"""stepbus memory service: session memory in Redis, long-term memory in Qdrant."""
