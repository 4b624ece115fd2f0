"""Public mode's admission of models: which model specs a stranger may use here.

The checks on plain values (paths, run names, Hub-id shape, the allow-list, the limits) live in
`lab.policy`; this module adds what needs the models themselves: the catalog's names, a Hub
model's config.json fetched and built on the meta device to count its parameters before any
weight is downloaded, and its listed weight files. `sources.resolve_source` calls
`check_model_spec` in public mode, so every page, command and training run goes through it.
"""

from __future__ import annotations

import functools
from pathlib import Path

from lab import policy
from lab.errors import LabError
from lab.models import hub
from lab.models.architecture import architecture_from_config, config_from_dict, warm_imports
from lab.models.catalog import EMBEDDED, catalog_names
from lab.tasks import bounded, within
from lab.units import fmt_bytes, fmt_count


def check_model_spec(spec: str, weights: bool = False) -> tuple[str, str]:
    """Public mode's model field: ('embedded'|'catalog'|'hub', normalised spec). Paths never get here
    as paths: a Hub-id-shaped 'runs/x' is a Hub id, and the file system is not consulted. weights=True
    (a page that loads the model): the hint names no catalog config, which such a page cannot load."""
    spec = (spec or "").strip()
    if spec.lower() == EMBEDDED:
        return "embedded", EMBEDDED
    by_name = {n.lower(): n for n in catalog_names()}
    if spec.lower() in by_name:
        return "catalog", by_name[spec.lower()]
    if policy.looks_like_path(spec) or not policy.is_hub_id(spec):
        raise LabError(
            f"Model {spec!r} is not allowed here. {policy.NO_PATHS}",
            f"Pick '{EMBEDDED}' or a Hub id (owner/name)." if weights else
            f"Pick '{EMBEDDED}', a catalog name (e.g. {', '.join(catalog_names()[:3])}), or a Hub id (owner/name).",
        )
    admit_hub_model(spec)
    return "hub", spec


# The Hub's answer about a model's size, or a refusal, within 5 s: at most the 2 s reachability probe
# (remembered for 30 s), then this long for config.json and the file listing. huggingface_hub retries a
# failing request for ~25 s (1+2+4+8+8 s); nobody waits for that.
HUB_SECONDS = 3.0


def _fetch_hub_config(hub_id: str) -> Path:
    """The config.json of a Hub model: one small file. This is the network boundary (tests stub it)."""
    # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(hub_id, "config.json", etag_timeout=HUB_SECONDS))
    except Exception as e:  # offline, unknown, gated, no config.json
        raise LabError(
            f"Could not fetch the config.json of {hub_id!r} from the Hugging Face Hub ({hub.fetch_failure(e)}), "
            "so its size cannot be checked before downloading.",
            f"Check the id and the network; or pick '{EMBEDDED}' or a catalog name.",
        ) from e


def _hub_config(hub_id: str, max_bytes: int) -> dict:
    """A Hub model's config.json, parsed: from the Hub within HUB_SECONDS, or from this machine's Hub cache
    when the Hub is out of reach; a LabError at once when it is neither."""
    if not hub.hub_reachable():
        folder = hub.hub_snapshot(hub_id, weights=False)
        if folder is None:
            raise LabError(
                f"{hub_id!r} cannot be checked: {hub.unreachable_reason()}, and this machine's Hub cache has no "
                "copy of it, so its size is unknown.",
                f"Pick '{EMBEDDED}' or a catalog name (e.g. {', '.join(catalog_names()[:3])}).",
            )
        path = folder / "config.json"
    else:
        late = LabError(f"The Hugging Face Hub did not answer within {HUB_SECONDS:.0f} s about {hub_id!r}, so its "
                        "size cannot be checked.", f"Try again in a moment, or pick '{EMBEDDED}' or a catalog name.")
        path = within(lambda: _fetch_hub_config(hub_id), HUB_SECONDS, late)
    size = path.stat().st_size
    if size > max_bytes:
        raise LabError(
            f"The config.json of {hub_id!r} is {fmt_bytes(size)}, above the {fmt_bytes(max_bytes)} a config may have."
        )
    return policy.read_config_bytes(path.read_bytes(), f"{hub_id}/config.json", max_bytes)


def _hub_weight_bytes(hub_id: str) -> int | None:
    """Bytes of the weight files `from_pretrained` would download (safetensors, else .bin), from the
    Hub's file listing; None when the listing is unavailable (or late). A repo whose config is small but
    whose files are huge is caught here."""
    # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
    from huggingface_hub import HfApi

    if not hub.hub_reachable():  # admitted from the Hub cache's config.json: no listing to wait for
        return None

    def listing():
        return HfApi().model_info(hub_id, files_metadata=True, timeout=HUB_SECONDS)

    try:
        info = within(listing, HUB_SECONDS, LabError("late"))
    except Exception:
        return None
    files = [(s.rfilename, s.size or 0) for s in (info.siblings or [])]
    safetensors = [n for f, n in files if f.endswith(".safetensors")]
    return sum(safetensors) if safetensors else sum(n for f, n in files if f.endswith((".bin", ".pt", ".pth")))


@functools.lru_cache(maxsize=256)
def _admitted(hub_id: str, max_params: int, allow: tuple[str, ...]) -> int | None:
    """Parameters of an admitted Hub model (None for an allow-listed one). Cached per process: a
    page rerun does not fetch again. Refusals raise, and are not cached."""
    if policy.allow_listed(hub_id, allow):
        return None
    lim = policy.limits()
    data = _hub_config(hub_id, lim.max_config_bytes)
    arch = architecture_within_limits(data, hub_id, lim)
    params = arch.params_total
    if params > max_params:
        raise LabError(
            f"Hub model {hub_id!r} has {fmt_count(params)} parameters ({params:,}), above this server's cap of "
            f"{fmt_count(max_params)} (QLORA_LAB_MAX_PARAMS).",
            "Pick a smaller model, 'embedded', or ask the instructor to allow-list it (QLORA_LAB_HUB_ALLOW).",
        )
    weights = _hub_weight_bytes(hub_id)
    if weights is not None and weights > max_params * 4 * 1.1:  # fp32 weights of a model at the cap, + 10%
        raise LabError(
            f"Hub model {hub_id!r} lists {fmt_bytes(weights)} of weight files, more than a "
            f"{fmt_count(max_params)}-parameter model needs: refused before downloading.",
            "Pick another model, or ask the instructor to allow-list it.",
        )
    return params


def admit_hub_model(hub_id: str) -> int | None:
    """Raise a LabError unless public mode may download `hub_id` (see `_admitted`)."""
    if not policy.is_hub_id(hub_id):
        raise LabError(f"{hub_id!r} is not a Hub id (owner/name).")
    lim = policy.limits()
    return _admitted(hub_id, lim.max_params, lim.hub_allow)


def architecture_within_limits(data: dict, name: str, lim: policy.Limits | None = None):
    """The calculator's architecture of a config dict, after the structure caps and within the
    time budget (a worker thread; the caller gets an answer even if transformers is slow)."""
    lim = lim or policy.limits()
    policy.check_config_structure(data, name, lim)
    warm_imports(data.get("model_type"))  # the budget below is for building, not a cold import
    label = Path(name).stem if name.endswith(".json") else name
    return bounded(
        lambda: architecture_from_config(config_from_dict(data, name), label), lim.config_seconds, f"Reading {name}"
    )
