"""Whose code an exception of a simulated step came from: the model's (and its libraries'), or the lab's.

A simulation runs the model's own code (transformers, peft, TRL, bitsandbytes) under the lab's tracker and
patches. When the model's code cannot run a config, the person gets one line naming the model type and the
step. When the lab's own code fails, that is a bug of ours and must not look like a limit of the model: the
simulation re-raises it, marked as an internal error.

The traceback says which. Walking from where the exception was raised outwards, torch's and the standard
library's frames are passed over (both run everyone's code), and so is the tracker's `__torch_dispatch__`
when an op merely passed through it; the first frame left decides:

- a library's file (site-packages): the model's code;
- any other file (the lab's, or code patched into it): ours, unless the skipped frames were the autograd
  engine running a backward (`loss.backward()` is our line, the graph it runs is the model's).
"""

from __future__ import annotations

import sysconfig
import traceback
from dataclasses import dataclass
from pathlib import Path

LAB = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
PASS_THROUGH = ("__torch_dispatch__",)  # lab frames an op of the model only passes through


@dataclass(frozen=True)
class Origin:
    ours: bool  # raised by the lab's own code: a bug to report
    where: str  # "transformers/models/bamba/modeling_bamba.py", "the backward of the model's graph", "lab/..."


def origin(error: BaseException) -> Origin:
    """Whose code raised `error` (see the module docstring)."""
    frames = traceback.extract_tb(error.__traceback__)
    backward = False
    for depth, frame in enumerate(reversed(frames)):
        path = Path(frame.filename).resolve()
        package = _site_package(path)
        if package == "torch" or (package is None and _under(path, STDLIB)):
            backward = backward or "autograd" in path.parts
            continue
        if package in (None, LAB.name):  # the lab's code (or code patched into it), not a library of the model
            if frame.name in PASS_THROUGH and depth > 0:
                continue
            if backward:
                return Origin(False, "the backward of the model's graph")
            where = path.relative_to(LAB.parent) if _under(path, LAB) else path.name
            return Origin(True, f"{where}:{frame.lineno} ({frame.name})")
        return Origin(False, package_path(path))
    return Origin(False, "torch")


def _site_package(path: Path) -> str | None:
    """The top-level package of a file installed in site-packages (or dist-packages), else None."""
    parts = path.parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            i = parts.index(marker)
            return parts[i + 1] if i + 1 < len(parts) else None
    return None


def package_path(path: Path) -> str:
    """A library file as `package/sub/file.py` (the part after site-packages)."""
    parts = path.parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[parts.index(marker) + 1:])
    return path.name


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
