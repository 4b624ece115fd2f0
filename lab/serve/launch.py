"""`python -m lab serve`: start Streamlit with the settings this environment needs.

Inside a Hugging Face Space the app runs in an iframe on huggingface.co. Browsers that block
third-party cookies (Safari, Firefox's strict mode, Chrome in incognito and with its third-party
cookie phase-out) drop Streamlit's `_streamlit_xsrf` cookie there, and then every upload
(`st.file_uploader`: a config.json, a dataset) fails with "AxiosError: Request failed with status
code 403". The documented remedy is `server.enableXsrfProtection=false`, so a Space gets it. What
that gives up is in docs/workshop.md ("Running a workshop").
"""

from __future__ import annotations

import math
import os
import sys

from lab import policy
from lab.paths import REPO_ROOT


def in_space(env: dict | None = None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get("SPACE_ID"))


def streamlit_args(env: dict | None = None, port: int = 8501, address: str = "0.0.0.0") -> list[str]:
    """`streamlit run` arguments for this environment (Streamlit 1.67 option names)."""
    env = os.environ if env is None else env
    args = ["run", "app.py", f"--server.port={port}", f"--server.address={address}", "--server.headless=true"]
    if in_space(env):
        args.append("--server.enableXsrfProtection=false")  # uploads from inside the Space's iframe
    if policy.public_mode(env):
        lim = policy.Limits.from_env(env)
        # Streamlit's own cap (whole MB) refuses an oversized upload before it reaches the app's memory.
        args.append(
            f"--server.maxUploadSize={max(1, math.ceil(max(lim.max_upload_bytes, lim.max_config_bytes) / 1e6))}"
        )
    return args


def command(env: dict | None = None, port: int = 8501, address: str = "0.0.0.0") -> list[str]:
    return [sys.executable, "-m", "streamlit", *streamlit_args(env, port, address)]


def serve(port: int = 8501, address: str = "0.0.0.0") -> None:
    """Replace this process with the Streamlit server (signals reach it directly)."""
    cmd = command(port=port, address=address)
    os.chdir(REPO_ROOT)
    os.execv(cmd[0], cmd)
