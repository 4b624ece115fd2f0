"""QLoRA/LoRA training: config (options + help), runner (one run), callback (the run writing its events),
events (the live log + stop, read without torch), runs (lock, status, history, starting the CLI as a
process), dispatch (the line on disk: one run at a time, started in turn), queue (submitting, stopping and
deleting a run), owners (who started a run, who may control it).

Nothing is imported here: `from lab.training.dispatch import dispatch` in a fresh process (a server's
first look at the queue, a finishing run) must not pay for torch and transformers."""
