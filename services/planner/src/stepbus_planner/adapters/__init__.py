"""Adapters from the planner's ports to real systems."""
