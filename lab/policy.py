"""Public mode: what a stranger may type into the lab, checked in one place.

A workshop Space or a public demo serves people the server does not trust. In public mode every
input names something the lab already offers — never a server path:

- models: 'embedded', a catalog name, or a Hub id whose parameter count (computed from its
  config.json alone, before any weight is downloaded) is under a cap, or that an allow-list names;
- adapters: run folders inside runs/ (or allow-listed Hub ids);
- datasets: the bundled ones, uploads (saved inside runs/uploads/), or allow-listed Hub ids;
- run names and output files: plain names, always inside runs/ (symlinks resolved);
- uploads: size-capped; a config.json is bounded in size, structure and time before transformers
  builds anything from it.

Local mode (the default on a laptop) keeps the lab's freedom: any folder, file or Hub id. Public
mode is on when QLORA_LAB_PUBLIC=1, and by default inside a Hugging Face Space (SPACE_ID set);
QLORA_LAB_PUBLIC=0 turns it off there.

The checks sit at the library's choke points (`resolve_source`, `inspect_adapter`,
`dataset_file`, the runner's run folder), so the pages, the CLI and a training process started
from a page all go through them. The lab never passes `trust_remote_code` (a test greps for it).
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeVar

from lab.errors import LabError
from lab.paths import runs_dir, uploads_dir
from lab.units import fmt_bytes, fmt_count

T = TypeVar("T")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
NO_PATHS = "Public mode accepts no server paths."
RESERVED_NAMES = ("uploads",)  # folders of runs/ that are not runs


def _f(default, help: str, env: str):
    return field(default=default, metadata={"help": help, "env": env})


@dataclass(frozen=True)
class Limits:
    """Public mode's limits. Each comes from an environment variable (named in `env`)."""

    max_params: int = _f(
        4_000_000_000,
        "Largest Hub model (parameters, computed from its config.json before any "
        "download) a visitor may load. Accepts 4e9 or 4B.",
        "QLORA_LAB_MAX_PARAMS",
    )
    hub_allow: tuple[str, ...] = _f(
        (),
        "Hub ids always allowed whatever their size, comma separated; 'owner/*' "
        "allows an owner's repos. Also the only Hub adapters and datasets allowed.",
        "QLORA_LAB_HUB_ALLOW",
    )
    max_upload_bytes: int = _f(
        20_000_000, "Largest dataset or test file a visitor may upload (MB).", "QLORA_LAB_MAX_UPLOAD_MB"
    )
    max_config_bytes: int = _f(
        512_000, "Largest config.json read from an upload or the Hub (KB).", "QLORA_LAB_MAX_CONFIG_KB"
    )
    max_layers: int = _f(
        1024,
        "Most layers a config may declare (any '*layers' count, n_layer): the architecture "
        "reader builds every layer, so 100,000 layers would keep a server thread busy for minutes.",
        "QLORA_LAB_MAX_LAYERS",
    )
    config_seconds: float = _f(
        10.0, "Time budget for reading an uploaded or Hub config.json into an architecture.", "QLORA_LAB_CONFIG_SECONDS"
    )

    @classmethod
    def help(cls, name: str) -> str:
        return {f.name: f.metadata for f in fields(cls)}[name]["help"]

    @classmethod
    def from_env(cls, env: dict | None = None) -> Limits:
        env = os.environ if env is None else env
        d = cls()
        allow = tuple(x.strip() for x in env.get("QLORA_LAB_HUB_ALLOW", "").split(",") if x.strip())
        return cls(
            max_params=_count(env.get("QLORA_LAB_MAX_PARAMS"), d.max_params, "QLORA_LAB_MAX_PARAMS"),
            hub_allow=allow,
            max_upload_bytes=int(
                _count(env.get("QLORA_LAB_MAX_UPLOAD_MB"), d.max_upload_bytes / 1e6, "QLORA_LAB_MAX_UPLOAD_MB") * 1e6
            ),
            max_config_bytes=int(
                _count(env.get("QLORA_LAB_MAX_CONFIG_KB"), d.max_config_bytes / 1e3, "QLORA_LAB_MAX_CONFIG_KB") * 1e3
            ),
            max_layers=int(_count(env.get("QLORA_LAB_MAX_LAYERS"), d.max_layers, "QLORA_LAB_MAX_LAYERS")),
            config_seconds=float(
                _count(env.get("QLORA_LAB_CONFIG_SECONDS"), d.config_seconds, "QLORA_LAB_CONFIG_SECONDS")
            ),
        )

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def rows(self) -> list[dict]:
        """One row per limit, in the shape of RequestLimits.rows() (tables, `python -m lab limits`)."""
        return [{"name": f.name, "value": getattr(self, f.name), "default": f.default, "env": f.metadata["env"],
                 "help": f.metadata["help"]} for f in fields(self)]


def _count(text: str | None, default: float, name: str) -> float:
    """'4e9', '4B', '500M', '20' -> a number; the default when unset."""
    if text is None or not text.strip():
        return default
    t = text.strip().upper().replace("_", "").replace(",", "")
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale != 1 else t) * scale
    except ValueError:
        raise LabError(f"{name}={text!r} is not a number.", "Use e.g. 4e9 or 4B.") from None
    if value <= 0:
        raise LabError(f"{name}={text!r} must be positive.")
    return value


def public_mode(env: dict | None = None) -> bool:
    """QLORA_LAB_PUBLIC=1/0 decides; unset, a Hugging Face Space (SPACE_ID) is public."""
    env = os.environ if env is None else env
    flag = env.get("QLORA_LAB_PUBLIC", "").strip().lower()
    if flag in TRUE:
        return True
    if flag in FALSE:
        return False
    return bool(env.get("SPACE_ID"))


def limits() -> Limits:
    return Limits.from_env()


# --------------------------------------------------------------------------- paths
def looks_like_path(text: str) -> bool:
    t = text.strip()
    return (
        t.startswith(("/", "~", ".", "\\"))
        or ".." in t
        or "\\" in t
        or t.count("/") > 1
        or bool(re.match(r"^[A-Za-z]:", t))
    )


def inside(path: Path, root: Path, given: str | None = None) -> Path:
    """`path` with symlinks resolved, if it lies inside `root`; else a LabError that quotes what the person
    gave (`given`), never where the server keeps runs/."""
    resolved = Path(os.path.realpath(path))
    root = Path(os.path.realpath(root))
    if resolved != root and root not in resolved.parents:
        raise LabError(f"{given or path.name!r} points outside runs/ (a path or a link out of it): refused.",
                       "Pick an entry of runs/.")
    return resolved


def run_folder(name_or_path: str | Path, root: Path | None = None) -> Path:
    """A folder inside runs/: a plain run name (or name/sub, e.g. a checkpoint) or a path that
    resolves inside runs/. `..`, absolute paths elsewhere and symlinks out of runs/ are refused,
    in local mode too: runs/ entries are what the pages list, and nothing else is reached this way."""
    root = Path(root) if root is not None else runs_dir()
    text = str(name_or_path).strip()
    if not text:
        raise LabError("No run given.", "Pick a run from runs/.")
    if ".." in Path(text).parts:
        raise LabError(f"Run {text!r} contains '..': refused.", "Give a run's name as listed in runs/.")
    path = Path(text)
    if not path.is_absolute():
        path = root / path
    return inside(path, root, text)


def check_run_name(name: str) -> str:
    """A run folder's name: letters, digits, '.', '_' and '-', no leading dot, at most 120 characters.
    Refused (not silently rewritten) so the person sees what their run will be called."""
    name = (name or "").strip()
    if name.lower() in RESERVED_NAMES:  # runs/uploads holds everyone's uploads: a run there could delete them
        raise LabError(f"Run name {name!r} is reserved.", "Pick another name.")
    if RUN_NAME.match(name) and ".." not in name:
        return name
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")[:120].replace("..", ".")
    raise LabError(
        f"Run name {name!r} is not allowed: use letters, digits, '.', '_' and '-' only (no '/', no leading dot).",
        f"For example {safe or 'my-run'!r}.",
    )


def output_dir(output: str) -> Path:
    """Where a run goes. Public mode: a plain name (or a path inside runs/) -> runs/<name>; local
    mode: any path, as before."""
    text = (output or "").strip()
    if not public_mode():
        return Path(text).expanduser().resolve()
    path = Path(text)
    if path.is_absolute() or "/" in text or "\\" in text:
        folder = run_folder(text)
        if folder.parent != Path(os.path.realpath(runs_dir())):
            raise LabError(
                f"Output {text!r} is not a run folder directly inside runs/.", f"{NO_PATHS} Give a run name."
            )
        check_run_name(folder.name)
        return folder
    return run_folder(check_run_name(text))


def output_file(path: str | Path) -> Path:
    """A report file (--markdown, --csv). Public mode: only inside runs/."""
    if not public_mode():
        return Path(path)
    text = str(path)
    if ".." in Path(text).parts:
        raise LabError(f"Output file {text!r} contains '..': refused.", f"{NO_PATHS} Write reports inside runs/.")
    p = Path(text) if Path(text).is_absolute() else runs_dir() / text
    folder = inside(p.parent, runs_dir(), text)
    return folder / p.name


# --------------------------------------------------------------------------- Hub ids
def is_hub_id(text: str) -> bool:
    return bool(HUB_ID.match(text)) and ".." not in text


def allow_listed(hub_id: str, allow: tuple[str, ...] | None = None) -> bool:
    allow = limits().hub_allow if allow is None else allow
    owner = hub_id.split("/", 1)[0].lower()
    return any(a.lower() == hub_id.lower() or a.lower() == f"{owner}/*" for a in allow)


def _fetch_hub_config(hub_id: str, max_bytes: int) -> dict:
    """The config.json of a Hub model: one small file. This is the network boundary (tests stub it)."""
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(hub_id, "config.json"))
    except Exception as e:  # offline, unknown, gated, no config.json
        raise LabError(
            f"Could not fetch the config.json of {hub_id!r} from the Hub ({type(e).__name__}), so its size "
            "cannot be checked before downloading.",
            "Check the id and the network; or pick 'embedded' or a catalog name.",
        ) from e
    size = path.stat().st_size
    if size > max_bytes:
        raise LabError(
            f"The config.json of {hub_id!r} is {fmt_bytes(size)}, above the {fmt_bytes(max_bytes)} a config may have."
        )
    return read_config_bytes(path.read_bytes(), f"{hub_id}/config.json", max_bytes)


def _hub_weight_bytes(hub_id: str) -> int | None:
    """Bytes of the weight files `from_pretrained` would download (safetensors, else .bin), from the
    Hub's file listing; None when the listing is unavailable. A repo whose config is small but whose
    files are huge is caught here."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(hub_id, files_metadata=True)
    except Exception:
        return None
    files = [(s.rfilename, s.size or 0) for s in (info.siblings or [])]
    safetensors = [n for f, n in files if f.endswith(".safetensors")]
    return sum(safetensors) if safetensors else sum(n for f, n in files if f.endswith((".bin", ".pt", ".pth")))


@functools.lru_cache(maxsize=256)
def _admitted(hub_id: str, max_params: int, allow: tuple[str, ...]) -> int | None:
    """Parameters of an admitted Hub model (None for an allow-listed one). Cached per process: a
    page rerun does not fetch again. Refusals raise, and are not cached."""
    if allow_listed(hub_id, allow):
        return None
    lim = limits()
    data = _fetch_hub_config(hub_id, lim.max_config_bytes)
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
    if not is_hub_id(hub_id):
        raise LabError(f"{hub_id!r} is not a Hub id (owner/name).")
    lim = limits()
    return _admitted(hub_id, lim.max_params, lim.hub_allow)


# --------------------------------------------------------------------------- model, adapter, dataset fields
def check_model_spec(spec: str, weights: bool = False) -> tuple[str, str]:
    """Public mode's model field: ('embedded'|'catalog'|'hub', normalised spec). Paths never get here
    as paths: a Hub-id-shaped 'runs/x' is a Hub id, and the file system is not consulted. weights=True
    (a page that loads the model): the hint names no catalog config, which such a page cannot load."""
    from lab.models.sources import EMBEDDED, catalog_names

    spec = (spec or "").strip()
    if spec.lower() == EMBEDDED:
        return "embedded", EMBEDDED
    by_name = {n.lower(): n for n in catalog_names()}
    if spec.lower() in by_name:
        return "catalog", by_name[spec.lower()]
    if looks_like_path(spec) or not is_hub_id(spec):
        raise LabError(
            f"Model {spec!r} is not allowed here. {NO_PATHS}",
            f"Pick '{EMBEDDED}' or a Hub id (owner/name)." if weights else
            f"Pick '{EMBEDDED}', a catalog name (e.g. {', '.join(catalog_names()[:3])}), or a Hub id (owner/name).",
        )
    admit_hub_model(spec)
    return "hub", spec


def check_adapter_source(source: str) -> str:
    """Public mode's adapter field: a run folder inside runs/ (by name or path), or an allow-listed Hub id."""
    text = (source or "").strip()
    if is_hub_id(text) and not (runs_dir() / text).exists():
        if allow_listed(text):
            return text
        raise LabError(
            f"Adapter {text!r} is not a run of this server, and Hub adapters must be allow-listed here.",
            "Pick a run from runs/ (train one on the Training page).",
        )
    if Path(text).is_absolute() and not _under(Path(text), runs_dir()):
        raise LabError(f"Adapter {text!r} is a server path outside runs/. {NO_PATHS}", "Pick a run from runs/.")
    return str(run_folder(text))


def check_dataset_source(source: str) -> str:
    """Public mode's dataset field: a bundled name, an upload (inside runs/uploads/), or an allow-listed Hub id."""
    from lab.data.datasets import list_datasets

    text = (source or "").strip()
    if text in list_datasets():
        return text
    if is_hub_id(text) and not looks_like_path(text) and not Path(text).suffix:
        if allow_listed(text):
            return text
        raise LabError(
            f"Hub dataset {text!r} is not allow-listed on this server.",
            f"Pick a bundled dataset ({', '.join(list_datasets())}) or upload a file.",
        )
    path = Path(text)
    lexically_in_uploads = path.is_absolute() and Path(os.path.abspath(uploads_dir())) in path.parents
    if ".." in path.parts or not lexically_in_uploads:
        raise LabError(
            f"Dataset {text!r} is not allowed here. {NO_PATHS}",
            f"Pick a bundled dataset ({', '.join(list_datasets())}) or upload a file.",
        )
    return str(inside(path, uploads_dir(), text))  # an upload that is a symlink out of runs/ is refused here


def _under(path: Path, root: Path) -> bool:
    try:
        inside(path, root)
        return True
    except LabError:
        return False


# --------------------------------------------------------------------------- uploads
def check_upload_size(name: str, size: int) -> None:
    """Public mode: refuse an upload above QLORA_LAB_MAX_UPLOAD_MB (lab.data.datasets.save_upload keeps it)."""
    lim = limits()
    if public_mode() and size > lim.max_upload_bytes:
        raise LabError(
            f"Upload {name!r} is {fmt_bytes(size)}, above this server's limit of "
            f"{fmt_bytes(lim.max_upload_bytes)} (QLORA_LAB_MAX_UPLOAD_MB).",
            "Upload a smaller file (fewer rows).",
        )


def read_config_bytes(data: bytes | str, name: str, max_bytes: int | None = None) -> dict:
    """An uploaded (or fetched) config.json as a dict, after the size cap; a LabError otherwise."""
    max_bytes = limits().max_config_bytes if max_bytes is None else max_bytes
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise LabError(
            f"{name} is {fmt_bytes(len(raw))}, above the {fmt_bytes(max_bytes)} a config.json may have here "
            "(QLORA_LAB_MAX_CONFIG_KB).",
            "A model's config.json is a few KB: check you picked the right file.",
        )
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise LabError(f"{name} is not a UTF-8 text file, so it cannot be a config.json.") from None
    except json.JSONDecodeError as e:
        raise LabError(f"{name} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from None
    except RecursionError:
        raise LabError(f"{name} nests too deeply to be a config.json.") from None
    if not isinstance(parsed, dict):
        raise LabError(f"{name} is not a transformers config: it is not a JSON object.")
    return parsed


def check_config_structure(data: dict, name: str, lim: Limits | None = None) -> None:
    """Refuse configs whose declared structure would make building the model on the meta device
    slow: any '*layers' count or n_layer above the cap (nested text/vision configs included)."""
    lim = lim or limits()
    for key, value in _walk(data):
        k = key.lower()
        if (
            (k.endswith("layers") or k in ("n_layer", "num_layers"))
            and isinstance(value, int)
            and not isinstance(value, bool)
        ):
            if value > lim.max_layers:
                raise LabError(
                    f"{name} declares {key}={value:,}, above the {lim.max_layers:,} layers this server builds "
                    "(QLORA_LAB_MAX_LAYERS).",
                    "Real models have at most a few hundred layers: check the file.",
                )
        if k == "layer_types" and isinstance(value, list) and len(value) > lim.max_layers:
            raise LabError(
                f"{name} lists {len(value):,} layer types, above the {lim.max_layers:,} layers this server builds."
            )


def _walk(data, depth: int = 0):
    if depth > 8:
        return
    if isinstance(data, dict):
        for k, v in data.items():
            yield str(k), v
            yield from _walk(v, depth + 1)


def architecture_within_limits(data: dict, name: str, lim: Limits | None = None):
    """The calculator's architecture of a config dict, after the structure caps and within the
    time budget (a worker thread; the caller gets an answer even if transformers is slow)."""
    from lab.models.architecture import architecture_from_config
    from lab.models.sources import config_from_dict

    lim = lim or limits()
    check_config_structure(data, name, lim)
    label = Path(name).stem if name.endswith(".json") else name
    return bounded(
        lambda: architecture_from_config(config_from_dict(data, name), label), lim.config_seconds, f"Reading {name}"
    )


_BOUNDED = threading.BoundedSemaphore(2)


def bounded(fn: Callable[[], T], seconds: float, what: str) -> T:
    """fn() in a worker thread, waiting at most `seconds`. At most two run at once, so a stream of
    slow requests cannot pile up threads; the others are told the server is busy."""
    if not _BOUNDED.acquire(timeout=seconds):
        raise LabError(f"{what}: the server is busy reading other configs.", "Try again in a few seconds.")
    box: dict = {}

    def work():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e
        finally:
            _BOUNDED.release()

    t = threading.Thread(target=work, name="lab-bounded", daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise LabError(f"{what} took longer than {seconds:.0f} s: refused.", "Check the config's sizes.")
    if "error" in box:
        raise box["error"]
    return box["value"]
