"""Decide, before transformers is imported, whether the model hub may be used.

transformers reads HF_HUB_OFFLINE at import time; set later, a hub name spends most of a
minute in retries. Locally built backbones never need the hub; for hub names we look the hub's
name up once and go offline when it does not resolve, so a hub name then fails in seconds.
"""

from __future__ import annotations

import os
import socket
import threading

LOCAL_PREFIX = "vlm-resampler/"
HUB_HOST = "huggingface.co"


def _resolves(host: str, timeout_s: float) -> bool:
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def configure_hub_access(backbone_names: list[str]) -> bool:
    """Set HF_HUB_OFFLINE=1 unless the user chose, or a hub name needs a hub that resolves.
    Returns True when offline."""
    if "HF_HUB_OFFLINE" in os.environ:  # the user's choice, which transformers read too
        return os.environ["HF_HUB_OFFLINE"] not in ("0", "", "false", "False")
    if "transformers" in __import__("sys").modules:
        raise RuntimeError("configure_hub_access must run before transformers is imported")
    needs_hub = [n for n in backbone_names if not n.startswith(LOCAL_PREFIX) and not os.path.isdir(n)]
    offline = not needs_hub or not _resolves(HUB_HOST, timeout_s=3.0)
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    return offline
