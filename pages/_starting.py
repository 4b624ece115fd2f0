"""Imported by every page right after streamlit, before its heavy imports: on a fresh server a deep link's first
visit (/training) runs its page before anything is imported, and the page's helpers import torch, transformers,
peft and bitsandbytes — seconds of a blank page (6.6 s here). Importing this module paints one line first, as app.py
does for the root URL. Python imports a module once: only the process's first visit paints, and only while the heavy
helpers (pages._ui) are not imported yet. The page then leaves legacy mode (pages._ui) and reruns through app.py,
which clears it; under AppTest pages._ui is imported already, so it paints nothing."""

from __future__ import annotations

from pages._legacy import paint_starting

paint_starting()
