"""Local development tools for stepbus (never imported by the services)."""
