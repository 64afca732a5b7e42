"""The project's error types for bad settings: each message names the value, the rule and the fix."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot work, with the value, the rule and the fix in the message."""


class AssetMissingError(ConfigError):
    """Model weights that are neither on disk nor reachable; the message says how to provide them."""
