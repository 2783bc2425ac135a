"""The one network probe: fail in seconds, before training, instead of after minutes of a client's retries."""

from __future__ import annotations

import socket
from urllib.parse import urlparse


def unreachable(url: str, timeout: float) -> str | None:
    """Why `url`'s host cannot be reached from here, or None when a connection opens."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as error:
        return f"{parsed.hostname}: {error}"
    return None
