"""Find, inspect and validate LoRA adapters before they touch a loaded base model.

An adapter comes from a training run in `runs/`, any folder holding `adapter_config.json` plus
its weights, or a Hub id (online only). Other tools save the same plain peft folders: TRL,
Axolotl, LLaMA-Factory and Unsloth write `adapter_config.json` + `adapter_model.safetensors` (or
the older `adapter_model.bin`) next to files of their own (trainer_state.json, training_args.bin,
README.md, ...), and mid-training only `checkpoint-N/` subfolders: given such an output folder,
the newest checkpoint is used. Everything here reads files only: a broken or foreign adapter is
reported with a clear message *before* peft injects layers into the shared base model, so a bad
adapter can never leave the base half-modified.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from lab import policy
from lab.errors import LabError
from lab.models.precision import get_precision
from lab.models.sources import folder_hub_id
from lab.paths import RUN_FILE, runs_dir

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Pre-quantized copies name the model they quantize plus a suffix (unsloth/Qwen2.5-0.5B-Instruct-bnb-4bit).
_QUANT_SUFFIX = re.compile(r"(-unsloth)?(-bnb)?-(4|8)bit$")


@dataclass
class AdapterInfo:
    """What the lab knows about one adapter, read from its files (no model needed)."""

    name: str  # column label; also the peft adapter name (no dots allowed there)
    path: Path  # local folder (a Hub adapter is downloaded first)
    source: str  # what the user gave: a run folder, a folder, or a Hub id
    kind: str  # 'run' | 'folder' | 'hub'
    config: dict = field(repr=False, default_factory=dict)
    run: dict = field(repr=False, default_factory=dict)  # lab_run.json of a training run, if any
    run_dir: Path | None = None  # the folder holding that lab_run.json (the adapter's folder or its parent)

    @property
    def peft_type(self) -> str:
        return str(self.config.get("peft_type", "LORA")).upper()

    @property
    def use_dora(self) -> bool:
        """DoRA adapters cannot join peft's mixed-adapter batches."""
        return bool(self.config.get("use_dora"))

    @property
    def rank(self) -> int | None:
        return self.config.get("r")

    @property
    def base_model(self) -> str | None:
        """The base the adapter was trained on: the run's record first, else peft's config."""
        base = self.run.get("base_model") if isinstance(self.run.get("base_model"), dict) else {}
        return base.get("display_name") or base.get("spec") or self.config.get("base_model_name_or_path")

    @property
    def dataset(self) -> str | None:
        ds = self.run.get("dataset")
        return ds.get("name") if isinstance(ds, dict) else ds

    @property
    def weights_file(self) -> Path:
        return next(self.path / f for f in WEIGHT_FILES if (self.path / f).is_file())

    def describe(self) -> str:
        bits = [f"{self.peft_type}{' (DoRA)' if self.use_dora else ''} r={self.rank}"]
        if self.base_model:
            bits.append(f"base {self.base_model}")
        if self.dataset:
            bits.append(f"data {self.dataset}")
        if self.run.get("precision"):
            bits.append(f"trained at {self.run['precision']}")
        if self.status in ("stopped", "failed"):
            bits.append(self.status)
        return ", ".join(bits)

    @property
    def status(self) -> str | None:
        """How its training run ended (finished | stopped | failed), None while running or for a plain folder."""
        return self.run.get("status")

    def to_json(self) -> dict:
        return {"name": self.name, "path": str(self.path), "source": self.source, "kind": self.kind,
                "peft_type": self.peft_type, "use_dora": self.use_dora, "rank": self.rank,
                "base_model": self.base_model, "dataset": self.dataset}


def adapter_name(text: str) -> str:
    """A peft-safe adapter name (module-dict keys cannot contain dots)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "adapter"
    return name if name != "__base__" else "adapter"


def unique_names(infos: list[AdapterInfo]) -> list[AdapterInfo]:
    """Rename adapters that share a name (two runs both called 'adapter') to name, name_2, ..."""
    seen: dict[str, int] = {}
    for info in infos:
        n = seen.get(info.name, 0) + 1
        seen[info.name] = n
        if n > 1:
            info.name = f"{info.name}_{n}"
    return infos


# --------------------------------------------------------------------------- discovery
def discover_runs(root: Path | None = None) -> list[AdapterInfo]:
    """Adapters of the training runs under `runs/` (newest first). Broken runs are skipped."""
    root = Path(root) if root is not None else runs_dir()
    if not root.is_dir():
        return []
    folders = {p.parent for p in root.glob(f"*/{CONFIG_FILE}")} | {p.parent for p in root.glob(f"*/*/{CONFIG_FILE}")}
    infos = []
    for folder in sorted(folders, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            infos.append(inspect_adapter(str(folder)))
        except LabError:
            continue  # a half-written run (training still saving) is not offered
    return unique_names(infos)


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LabError(f"{what} {path} is not valid JSON (line {e.lineno}: {e.msg}).",
                       "The adapter is corrupt: save or download it again.") from e
    except OSError as e:
        raise LabError(f"Cannot read {what} {path}: {e.strerror}.") from e
    if not isinstance(data, dict):
        raise LabError(f"{what} {path} is not a JSON object.", "The adapter is corrupt: save or download it again.")
    return data


def _download(hub_id: str) -> Path:
    # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, allow_patterns=[CONFIG_FILE, *WEIGHT_FILES, RUN_FILE]))
    except Exception as e:  # offline, unknown repo, gated...
        raise LabError(
            f"Adapter {hub_id!r} is not a local folder and could not be fetched from the Hub ({type(e).__name__}).",
            "Give a folder with adapter_config.json, pick a run from runs/, or go online for Hub ids.",
        ) from e


def inspect_adapter(source: str, name: str | None = None) -> AdapterInfo:
    """Read an adapter's files and check they are complete; raise a LabError naming what is wrong."""
    source = (source or "").strip()
    if not source:
        raise LabError("No adapter given.", "Pick a run, or give an adapter folder or Hub id.")
    if policy.public_mode():  # a run folder inside runs/, or an allow-listed Hub id
        source = policy.check_adapter_source(source)
    path = Path(source).expanduser()
    if path.is_dir():
        kind = "run" if _inside(path, runs_dir()) else "folder"
    elif path.exists():
        raise LabError(
            f"Adapter {source!r} is a file, not a folder.", "Give the folder that holds adapter_config.json."
        )
    elif source.count("/") == 1 and not source.startswith((".", "/", "~")):
        path, kind = _download(source), "hub"
    else:
        raise LabError(f"Adapter folder {source!r} does not exist.", "Check the path, or pick a run from runs/.")

    path = adapter_folder(path)
    if not (path / CONFIG_FILE).is_file():
        raise LabError(
            f"{path} has no {CONFIG_FILE} (nor a checkpoint-N/ folder with one), so it is not a peft adapter folder.",
            "Point at the folder a training run saved (it holds adapter_config.json).",
        )
    config = _read_json(path / CONFIG_FILE, "Adapter config")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise LabError(
            f"Adapter {path.name} is a {peft_type or 'unknown'} adapter; the playground compares LoRA adapters.",
            "Pick a LoRA adapter (peft_type LORA in adapter_config.json).",
        )
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise LabError(f"Adapter {path} has a config but no weights ({' or '.join(WEIGHT_FILES)}).",
                       "The run may still be saving, or the copy is incomplete.")
    homes = [path, path.parent] + ([path.parent.parent] if path.parent.name == "checkpoints" else [])
    run_file = next((p / RUN_FILE for p in homes if (p / RUN_FILE).is_file()), None)
    run = _read_json(run_file, "Run record") if run_file else {}
    label = name or run.get("name") or (path.name if path.name not in ("adapter", "final") else path.parent.name)
    if _CHECKPOINT.match(path.name):  # output/checkpoint-500 -> "output-checkpoint-500"
        label = name or f"{(run.get('name') or homes[-1].name)}-{path.name}"
    info = AdapterInfo(adapter_name(label), path, source, kind, config, run, run_file.parent if run_file else None)
    adapter_shapes(info)  # a truncated or corrupt weights file fails here, with its name
    return info


def adapter_folder(path: Path) -> Path:
    """`path` when it holds adapter_config.json, else its newest checkpoint-N/ (or checkpoints/checkpoint-N/, the
    lab's layout) that does: an output folder of a run still training, or of one that crashed before saving."""
    if (path / CONFIG_FILE).is_file():
        return path
    found = [p for p in (*path.glob("checkpoint-*"), *path.glob("checkpoints/checkpoint-*"))
             if _CHECKPOINT.match(p.name) and (p / CONFIG_FILE).is_file()]
    return max(found, key=lambda p: int(_CHECKPOINT.match(p.name).group(1))) if found else path


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------- validation
def adapter_shapes(info: AdapterInfo) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the weights file without loading the tensors."""
    f = info.weights_file
    try:
        if f.suffix == ".safetensors":
            with safe_open(str(f), framework="pt") as sf:
                return {k: tuple(sf.get_slice(k).get_shape()) for k in sf.keys()}
        # torch: 1.1 s to import; imported where used, not with this module
        import torch

        return {k: tuple(v.shape) for k, v in torch.load(f, map_location="cpu", weights_only=True).items()}
    except Exception as e:
        raise LabError(f"Adapter weights {f} cannot be read ({type(e).__name__}: {e}).",
                       "The file is corrupt or truncated: save or download the adapter again.") from e


def _names(text: str | None) -> set[str]:
    """Comparable names for a model reference: 'HuggingFaceTB/SmolLM2-135M-Instruct' and
    '~/.cache/qlora-lab/models/SmolLM2-135M-Instruct' both give 'smollm2-135m-instruct'."""
    if not text:
        return set()
    text = str(text).rstrip("/\\")
    last = re.split(r"[/\\]", text)[-1].lower()
    return {text.lower(), last, _QUANT_SUFFIX.sub("", last)}


def base_mismatch(info: AdapterInfo, source) -> str | None:
    """A warning when the adapter was trained on another base than `source` (a ModelSource), else None."""
    recorded = [info.config.get("base_model_name_or_path")]
    base = info.run.get("base_model")
    if isinstance(base, dict):
        recorded += [base.get("spec"), base.get("display_name")]
    recorded = [r for r in recorded if r]
    if not recorded:
        return None  # nothing recorded: nothing to compare; the shape check still guards loading

    origin = folder_hub_id(source.path) if getattr(source, "kind", None) == "folder" else None  # a Hub snapshot, say
    chosen = set().union(*(_names(x) for x in (source.spec, source.pretrained_id, source.display_name,
                                                 getattr(source, "hub_id", None), origin)))
    if any(_names(r) & chosen for r in recorded):
        return None
    return (f"Adapter {info.name} was trained on {recorded[-1]!r}, not on the chosen base "
            f"{source.display_name!r}: its answers may be meaningless.")


@dataclass
class AdapterChoice:
    """The adapters a person chose, checked against the chosen base before anything loads."""

    infos: list[AdapterInfo]  # usable, each with a unique (peft-safe) name
    errors: list[LabError]  # one per adapter left out: missing, corrupt, not LoRA...
    warnings: list[str]  # adapters recorded as trained on another base


def choose_adapters(sources: list[str], base=None) -> AdapterChoice:
    """Inspect each adapter (a bad one is left out with its error, the others stay usable), name them
    uniquely, and warn about those trained on another base than `base` (a ModelSource, if known)."""
    infos, errors = [], []
    for source in sources:
        try:
            infos.append(inspect_adapter(source))
        except LabError as e:
            errors.append(e)
    infos = unique_names(infos)
    warnings = [w for w in (base_mismatch(i, base) for i in infos) if w] if base is not None else []
    return AdapterChoice(infos, errors, warnings)


def check_compatible(info: AdapterInfo, model) -> None:
    """Raise a LabError when the adapter's LoRA matrices do not fit the base model's layers."""
    for key, shape in adapter_shapes(info).items():
        m = re.match(
            r"(?:base_model\.model\.)?(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?\.weight$", key
        )
        if m is None:
            m2 = re.match(r"(?:base_model\.model\.)?(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)$", key)
            if m2 is None:
                continue  # modules_to_save, DoRA magnitudes: peft checks those itself
            m = m2
        module_path, part = m.group(1), m.group(2)
        if module_path.endswith(".base_layer") or ".base_layer." in module_path:
            continue  # a fused expert tensor (peft's ParamWrapper, nested per parameter): peft checks its shape
        try:
            module = model.get_submodule(module_path)
        except AttributeError:
            raise LabError(f"Adapter {info.name} targets layer {module_path!r}, which the base model does not have.",
                           "It was trained for another architecture: pick an adapter made for this base.") from None
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        if part in ("lora_A", "lora_B"):
            fan_in, fan_out = getattr(base, "in_features", None), getattr(base, "out_features", None)
        else:
            fan_in, fan_out = getattr(base, "num_embeddings", None), getattr(base, "embedding_dim", None)
        if fan_in is None or fan_out is None:
            continue
        expected = fan_in if part in ("lora_A", "lora_embedding_A") else fan_out
        got = shape[1] if part in ("lora_A", "lora_embedding_A") else shape[0]
        if len(shape) != 2 or got != expected:
            raise LabError(
                f"Adapter {info.name} does not fit this base: {key} has shape {list(shape)}, but layer "
                f"{module_path} has {fan_in} inputs and {fan_out} outputs.",
                "It was trained on a model of another size: pick an adapter made for this base.",
            )


def precision_note(info: AdapterInfo, precision: str) -> str | None:
    """A note when the adapter was trained on a base at another precision than the one it runs on here
    (say NF4 in training, FP32 now): the base weights differ by the quantization error, so its answers can
    differ slightly from what training saw. None when the run recorded no precision or they match."""
    trained = info.run.get("precision")
    if not trained or not precision:
        return None
    try:
        was, now = get_precision(str(trained)), get_precision(precision)
    except LabError:
        return None
    if was.name == now.name:
        return None
    return (f"Trained on a {was.label} base; here on {now.label}: the base weights differ by the quantization "
            "error, so outputs can differ slightly from what training saw.")


def newest_matching(runs: list[AdapterInfo], source) -> AdapterInfo | None:
    """The run to preselect: the newest finished run (runs come newest first) whose recorded base is `source`;
    the newest one stopped early or still saving only when none finished. None when no run matches."""
    if source is None:
        return None
    matching = [r for r in runs if r.run and not base_mismatch(r, source)]
    return next((r for r in matching if r.status == "finished"), matching[0] if matching else None)
