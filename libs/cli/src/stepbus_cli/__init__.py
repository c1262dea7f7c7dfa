"""stepbus CLI (``stepbus``): a client of the gateway."""
