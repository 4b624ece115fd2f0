"""QLoRA Lab library: everything the Streamlit pages and the CLI share.

No Streamlit import is allowed anywhere in this package (a test enforces it): pages are thin
wrappers over these functions, and `python -m lab` exposes the same code paths.
"""

from lab.paths import configure_hub_cache
from lab.quiet import quiet_noisy_libraries

__version__ = "0.1.0"

configure_hub_cache()  # before quiet_noisy_libraries imports transformers (and huggingface_hub)
quiet_noisy_libraries()
