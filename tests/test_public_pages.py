"""Every page in public mode (AppTest): model, adapter, dataset and output fields are pickers of what the
server allows (no free-text path fields), and paths smuggled in through the URL are refused with a
message on the page, nothing read or written outside runs/."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
PAGES = {
    name: str(ROOT / "pages" / f"{name}.py")
    for name in ("calculator", "lora_estimator", "loading_lab", "playground", "training")
}
PATH_FIELDS = {
    "Folder, config.json path or Hub id",
    "Other adapters (one per line)",
    "Base model",
    "Model",
    "Hub dataset id",
}


@pytest.fixture
def public(tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_LAB_PUBLIC", "1")
    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("QLORA_LAB_HUB_ALLOW", raising=False)
    (tmp_path / "outside").mkdir()
    return tmp_path


def page(name: str, **params) -> AppTest:
    at = AppTest.from_file(PAGES[name], default_timeout=180)
    for k, v in params.items():
        at.query_params[k] = v
    return at.run()


@pytest.mark.parametrize("name", list(PAGES))
def test_no_free_text_path_fields_in_public_mode(public, name):
    at = page(name)
    assert not at.exception
    free_text = {w.label for w in [*at.text_input, *at.text_area]}
    assert not free_text & PATH_FIELDS, free_text
    models = [s for s in at.selectbox if s.label in ("Model", "Base model")]
    assert models and all("Hub id…" in s.options and not any("/" in o for o in s.options) for s in models)


@pytest.mark.slow
def test_urls_with_paths_are_refused_on_the_page(public):
    outside = str(public / "outside")
    at = page("calculator", model="Hub id…", source=outside)
    assert any("accepts no server paths" in e.value for e in at.error)
    at = page("playground", adapter=f"{outside}/adapter")
    assert any("server path outside runs/" in e.value and "(left out)" in e.value for e in at.error)
    at = page("training", run="../outside")
    assert not at.exception and any("No run yet" in c.value for c in at.caption)
    at = page("loading_lab", model=outside)
    assert at.selectbox(key="ll_model").value == "embedded"  # a path in the URL is not an option
    assert {p.name for p in public.iterdir()} <= {"outside", "runs"} and list((public / "outside").iterdir()) == []


def test_a_hub_id_field_refuses_a_path_shaped_entry(public):
    at = page("training")
    at.selectbox(key="t_model").set_value("Hub id…").run()
    at.text_input(key="t_model_hub").set_value("../../etc").run()
    # refused as typed, next to the field (issue 20 papercut 8), so Train cannot even be pressed
    assert any("accepts no server paths" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="t_train").disabled
    assert (
        not (public / "runs").exists()
        or [p.name for p in (public / "runs").iterdir() if not p.name.startswith(".")] == []
    )


def test_upload_boxes_state_the_public_cap_not_streamlits_200_mb(public, monkeypatch):
    """Issue 20 bug 7: under `streamlit run app.py` in public mode (no --server.maxUploadSize), the upload boxes
    said 200MB while the lab refuses more than its cap: each box now states (and its browser side enforces) the cap."""
    monkeypatch.setenv("QLORA_LAB_MAX_UPLOAD_MB", "20")
    monkeypatch.setenv("QLORA_LAB_MAX_CONFIG_KB", "2000")
    at = page("calculator", model="Upload a config.json…")
    assert not at.exception and at.file_uploader(key="config_upload").proto.max_upload_size_mb == 2
    at = page("training", t_dataset="Upload a file…")
    boxes = [u.proto.max_upload_size_mb for u in at.get("file_uploader")]
    assert not at.exception and boxes == [20]
    at = page("playground")
    assert not at.exception and [u.proto.max_upload_size_mb for u in at.get("file_uploader")] == [20]


def test_upload_boxes_keep_streamlits_setting_locally(monkeypatch):
    monkeypatch.delenv("QLORA_LAB_PUBLIC", raising=False)
    at = page("calculator", model="Upload a config.json…")
    assert at.file_uploader(key="config_upload").proto.max_upload_size_mb == 200  # Streamlit's server.maxUploadSize
