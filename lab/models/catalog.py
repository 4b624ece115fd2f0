"""The models the lab names without a path: the embedded SmolLM2 and the catalog of config.json files
shipped in assets/configs. Plain names and a folder listing: everything above (sources, public-mode
admission, the pages' pickers) reads them from here."""

from __future__ import annotations

from lab.paths import ASSETS_DIR

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_LICENSE = "apache-2.0"  # the license on its Hub model card
CATALOG_DIR = ASSETS_DIR / "configs"


def catalog_names() -> list[str]:
    return sorted(p.stem for p in CATALOG_DIR.glob("*.json"))
