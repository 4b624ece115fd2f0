"""A room full of people on one server: shared models, one fair queue per device, admission from
the lab's own memory predictions, and per-request limits.

- `limits`: RequestLimits, the per-request caps (new tokens, adapters, batch, sequence length,
  steps, examples, queue length), read from environment variables.
- `queue`: DeviceQueue, one FIFO line per device with positions and estimated waits.
- `admission`: what a load, a generation, an evaluation or a training run will need, held against
  the device's free memory, with a message that says what is missing and what would fit.
- `shared`: SharedModels, the one object a server keeps (the registry, the queues, the limits):
  sessions lease models from it and run work through it; `status()` is the read-only view an
  instructor's page shows.
"""
