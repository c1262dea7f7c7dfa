"""Adapters from the memory service's ports to real systems (ONNX model, Qdrant, Redis)."""
