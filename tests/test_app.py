"""The app shell under Streamlit's AppTest: every page renders without an exception."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent


def test_app_routes_to_home():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "QLoRA Lab"
    assert any(m.label == "Device" and m.value == "CPU" for m in at.metric)
    assert any("ready" in s.value for s in at.success)


def test_home_page_alone():
    at = AppTest.from_file(str(ROOT / "pages" / "home.py"), default_timeout=60).run()
    assert not at.exception
    import torch

    assert any(f"`{torch.__version__}`" in m.value for m in at.markdown)
