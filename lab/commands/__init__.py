"""CLI subcommands, discovered automatically by `lab.cli` (one module per command)."""
