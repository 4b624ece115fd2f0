"""`python -m lab queue`: the running training and the queue behind it, with estimated starts."""

from __future__ import annotations

import argparse

from lab.training import queue as Q
from lab.units import fmt_seconds, format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stop", metavar="RUN", help="stop this run (or take it out of the queue), as the server's operator"
    )


def run(args: argparse.Namespace) -> dict:
    stopped = (
        Q.stop_run(args.stop, None, admin=True) if args.stop else None
    )  # a shell on the server is the operator
    if not args.stop:
        Q.dispatch()  # an idle device with a queue (the last run died unannounced) starts the next run now
    active, line = Q.queue_state()
    running = None
    if active is not None:
        running = {
            "name": active.name,
            "status": active.status,
            "step": active.step,
            "max_steps": active.max_steps,
            "remaining_seconds": Q.remaining_seconds(active, Q.timed_runs()),
        }
    return {"running": running, "queued": [q.to_json() for q in line], "stopped": stopped}


def render(r: dict) -> str:
    out = [f"--stop: {r['stopped']}"] if r["stopped"] else []
    a = r["running"]
    out.append(
        f"running: {a['name']} ({a['status']}, step {a['step']}/{a['max_steps']}, "
        f"ends in {fmt_seconds(a['remaining_seconds'], 'unknown')})"
        if a
        else "running: nothing"
    )
    rows = [(q["position"], q["name"], q["planned_steps"] or "?", fmt_seconds(q["starts_in"], "unknown"))
            for q in r["queued"]]
    out.append(format_table(rows, ("#", "queued run", "steps", "starts in")) if rows else "queue: empty")
    return "\n".join(out)
