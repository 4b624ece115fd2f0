"""Files written whole or not at all: a reader (another session, a page polling a run) never sees half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lab.errors import LabError


def write_json_atomic(path: Path, data: dict, hint: str = "Check disk space and permissions.") -> None:
    """Write `data` as JSON via a temporary file (named for this process, so two writers never share one)
    and a rename; a failed write leaves the old file as it was and raises a LabError naming the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise LabError(f"Could not write {path}: {e.strerror or e}.", hint) from e
