"""Serving processes: HTTP front ends around one engine process (see docs/service.md)."""
