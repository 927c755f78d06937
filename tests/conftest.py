"""Shared pytest setup for tunlab's own tests (the tunlab plugin itself loads through its entry point)."""

pytest_plugins = ["pytester"]
