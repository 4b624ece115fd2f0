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

This module is the bottom layer of those checks: pure checks on values (names, paths, Hub-id
shape, the allow-list, the limits), importing nothing of the lab above errors/paths/units. What
needs a model or a dataset lives beside the code it admits: `lab.models.public` (models: the
catalog, a Hub config's parameter count) and `lab.data.datasets.check_dataset_source`. They are
called at the library's choke points (`resolve_source`, `inspect_adapter`, `dataset_file`, the
runner's run folder), so the pages, the CLI and a training process started from a page all go
through them. The lab never passes `trust_remote_code` (a test greps for it).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from lab.errors import LabError
from lab.paths import runs_dir
from lab.units import fmt_bytes

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


# --------------------------------------------------------------------------- adapter fields
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
