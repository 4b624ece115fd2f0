"""Is the Hugging Face Hub usable from here? HF_HUB_OFFLINE, a quick TCP probe of the endpoint
(remembered for 30 s), and what the local Hub cache already holds. Resolving a model (sources) and
public-mode admission (public) both ask here before anything waits on huggingface_hub's retries."""

from __future__ import annotations

import os
import time
from pathlib import Path

_PROBE_TTL_S = 30.0
_probe: dict[str, tuple[float, bool]] = {}  # endpoint host -> (when probed, reachable)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE set (read now: huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return constants.HF_HUB_OFFLINE or flag in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 2.0) -> bool:
    """Can this machine open a connection to the Hub? A TCP connect to the endpoint (DNS fails in
    milliseconds on a machine without network), remembered for 30 s. Behind a proxy the answer is
    yes: the proxy, not this probe, decides."""
    if hub_offline():
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    seen = _probe.get(host)
    if seen is not None and time.monotonic() - seen[0] < _PROBE_TTL_S:
        return seen[1]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        ok = True
    except OSError:
        ok = False
    _probe[host] = (time.monotonic(), ok)
    return ok


def hub_snapshot(hub_id: str, weights: bool) -> Path | None:
    """The folder of `hub_id` in the local Hugging Face cache, when it holds a config.json (and, when
    `weights`, a weight file); None otherwise."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # an id the cache layout cannot hold: treat as not cached
        return None
    if not isinstance(found, str):
        return None
    folder = Path(found).parent
    if weights and not (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))):
        return None
    return folder
