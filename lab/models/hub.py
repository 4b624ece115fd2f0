"""Is the Hugging Face Hub usable from here? HF_HUB_OFFLINE, a quick TCP probe of the endpoint
(remembered for 30 s), and what the local Hub cache already holds. Resolving a model (sources) and
public-mode admission (public) both ask here before anything waits on huggingface_hub's retries."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

_PROBE_TTL_S = 30.0
_probe: dict[str, tuple[float, bool]] = {}  # endpoint host:port -> (when probed, reachable)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE set (read now: huggingface_hub reads it once, at import)."""
    # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
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

    # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)  # HF_ENDPOINT may name another port (a mirror)
    seen = _probe.get(f"{host}:{port}")
    if seen is not None and time.monotonic() - seen[0] < _PROBE_TTL_S:
        return seen[1]
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        ok = True
    except OSError:
        ok = False
    _probe[f"{host}:{port}"] = (time.monotonic(), ok)
    return ok


def unreachable_reason() -> str:
    """Why the Hub is out of reach, in words (for messages): HF_HUB_OFFLINE, or no connection."""
    return "HF_HUB_OFFLINE is set" if hub_offline() else "this machine cannot reach the Hugging Face Hub"


def hub_snapshot(hub_id: str, weights: bool) -> Path | None:
    """The folder of `hub_id` in the local Hugging Face cache, when it holds a config.json (and, when
    `weights`, a weight file); None otherwise."""
    # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
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


def fetch_failure(error: BaseException) -> str:
    """What went wrong with a Hub request, in words a person can act on (never an exception's class name)."""
    # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
    from huggingface_hub import errors

    if isinstance(error, errors.GatedRepoError):
        return "the model is gated, and this server has not been granted access to it"
    if isinstance(error, errors.RepositoryNotFoundError):
        return "there is no such model on the Hub (or it is private)"
    if isinstance(error, errors.RevisionNotFoundError):
        return "the Hub has no such revision of it"
    if isinstance(error, errors.LocalEntryNotFoundError | errors.OfflineModeIsEnabled):
        return "the Hub could not be reached and this machine's Hub cache has no copy"
    if isinstance(error, errors.RemoteEntryNotFoundError):
        return "its repository lacks a file the lab needs (config.json or the weights)"
    return "the Hub did not answer as expected"
