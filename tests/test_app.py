"""The app shell under Streamlit's AppTest: app.py routes to Home, and Home shows this machine.

The other pages have their own AppTest files; here, only what the shell and Home promise.
"""

from pathlib import Path

from streamlit.testing.v1 import AppTest

from lab.environment import device_type

ROOT = Path(__file__).resolve().parent.parent


def _home() -> AppTest:
    """Home as people reach it: through app.py's navigation (pages never run on their own; see
    pages/_ui.py on Streamlit's legacy pages mode)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    assert not at.exception
    return at


def test_app_routes_to_home():
    at = _home()
    assert at.title[0].value == "QLoRA Lab"
    assert any(m.label == "Device" and m.value == device_type().upper() for m in at.metric)
    assert any("ready" in s.value for s in at.success)


def test_home_shows_the_library_versions():
    at = _home()
    import torch

    assert any(f"`{torch.__version__}`" in m.value for m in at.markdown)
