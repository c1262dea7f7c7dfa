"""Adapters of the critic's ports: the judge model over an OpenAI-compatible endpoint."""
