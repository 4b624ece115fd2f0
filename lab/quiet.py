"""Silence library chatter that would drown real messages in the CLI and the app logs."""

import logging
import os
import sys
import warnings


def quiet_noisy_libraries() -> None:
    # bitsandbytes warns on *every* int8 matmul when the input is fp32 (the CPU default).
    warnings.filterwarnings("ignore", message=r"MatMul8bitLt: inputs will be cast")
    warnings.filterwarnings("ignore", message=r".*kernels-community.*")
    # bitsandbytes tries to fetch optional CPU kernels from the Hub; there is no Hub here.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Progress bars from transformers/huggingface_hub make CLI --json output unreadable. Said through the
    # environment, which transformers reads when it is first imported: importing it here would cost every
    # light process (`lab --help`, a queue dispatcher) 0.8 s.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:  # imported before the lab: its logging is set up already
        # transformers: 0.7 s to import; imported where used, not with this module
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
