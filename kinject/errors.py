"""One error type for bad input, raised before any training starts."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """Names the config key (or file and line), what it expects, and what it got."""

    def __init__(self, key: str, expected: str, got: Any = None, hint: str = "") -> None:
        self.key, self.expected, self.got, self.hint = key, expected, got, hint
        message = f"{key}: expected {expected}"
        if got is not None:
            message += f", got {got!r}"
        if hint:
            message += f". {hint}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[str, str, Any, str]]:
        """Rebuilt from its parts: a parallel sweep's worker sends a failed job's error back pickled."""
        return type(self), (self.key, self.expected, self.got, self.hint)
