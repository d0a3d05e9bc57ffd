"""Errors shared across the package.

This module is at the bottom of the import graph: it imports nothing from
asyncsgd, so the config schema, the emulated cluster's link model, the data
loaders and the validation can all raise the same error without importing each
other (``tests/unit/test_imports.py`` keeps the graph free of cycles).
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A config value is invalid; the message is one line naming the key to fix."""
