"""Instructor: who is connected and what they are doing, the training queue, loaded models and their
memory (who holds them, their adapters), the device's work queue, preloading and the limits, with
controls (stop or unqueue any run, free unused models).

Routed only when QLORA_LAB_ADMIN_TOKEN is set, and opened only for a session that types the token.
"""

from __future__ import annotations

import time

import streamlit as st

import pages._starting  # noqa: F401  (a fresh server's first visit: paints before the imports below)
from lab import policy
from lab.serve.admin import admin_digest, check_admin_token, weak_token
from lab.training import queue as Q
from lab.units import fmt_bytes, fmt_limit, fmt_seconds
from pages._cookies import ADMIN_COOKIE, set_cookie
from pages._stop import stop_page
from pages._ui import friendly_errors, is_admin, server_services, session_alive, shared_models

st.title("Instructor")

if not is_admin():
    with st.form("instructor-login"):
        token = st.text_input(
            "Instructor token",
            type="password",
            help="The value of QLORA_LAB_ADMIN_TOKEN on this server. Nobody else sees this page's controls.",
        )
        if st.form_submit_button("Open", icon=":material/lock_open:"):
            if check_admin_token(token):
                st.session_state["lab_admin"] = True
                st.rerun()
            time.sleep(1.0)  # slows guessing down; the comparison itself takes the same time for any guess
            st.error("That is not the instructor's token.", icon=":material/lock:")
    stop_page()

if not st.session_state.get("lab_admin_cookie"):  # signed in: this browser stays so across refreshes
    set_cookie(ADMIN_COOKIE, admin_digest())
    st.session_state["lab_admin_cookie"] = True

if weak_token():
    st.warning(
        "QLORA_LAB_ADMIN_TOKEN is short enough to guess: use 16 or more random characters.", icon=":material/warning:"
    )


# --------------------------------------------------------------------------- the one place that reads the shared models
def model_status() -> list[dict]:
    """Loaded models with their true bytes, who holds them and their adapters (`SharedModels.status()`)."""
    return [
        {
            "model": m["spec"],
            "precision": m["precision"],
            "dtype": m["dtype"],
            "state": m["state"],
            "bytes": m["bytes"] or 0,
            "held by": len(m["holders"]),
            "idle": f"{m['idle_seconds']:.0f} s",
            "adapters": len(m["adapters"]),
            "adapter bytes": m["adapter_bytes"],
        }
        for m in shared_models().status().models
    ]


def free_model(spec: str, precision: str) -> tuple[int, bool]:
    """Free `spec@precision` if nobody holds it: (models freed, whether it was in use and stayed)."""
    freed = shared_models().free_unused(spec, precision)
    return len(freed), not freed and any(r["model"] == spec and r["precision"] == precision for r in model_status())


# --------------------------------------------------------------------------- sections
def sessions_section() -> None:
    services = server_services()
    sessions = services.board.snapshot(session_alive)
    st.metric(
        "Connected sessions",
        len(sessions),
        help="Browser tabs connected to this server right now (Streamlit sessions).",
    )
    if sessions:
        now = time.time()
        st.dataframe(
            [
                {
                    "session": a.short,
                    "page": a.page,
                    "doing": a.doing or "–",
                    "active": f"{now - a.last_seen:.0f} s ago",
                    "connected for": f"{(now - a.first_seen) / 60:.0f} min",
                }
                for a in sessions
            ],
            hide_index=True,
        )


def training_section() -> None:
    active, line = Q.queue_state()
    if active is None:
        st.caption("No training is running." + (" The queue starts its next run within seconds." if line else ""))
    else:
        remaining = Q.remaining_seconds(active, Q.timed_runs())
        st.markdown(
            f"**Running:** `{active.name}` — {active.status}, step {active.step} / {active.max_steps or '?'}, "
            f"ends in {fmt_seconds(remaining, 'unknown')}"
        )
        if st.button(
            "Stop the running run",
            icon=":material/stop:",
            disabled=active.status == "stopping",
            help="Writes the STOP file: the run finishes its step, saves its adapter and exits; "
            "the next queued run starts.",
        ):
            with friendly_errors("Stopping"):
                Q.stop_run(active.run_dir, None, admin=True)
                st.toast(f"Stop requested for {active.name}.")
                st.rerun()
    if line:
        st.dataframe(
            [
                {
                    "#": q.position,
                    "run": q.name,
                    "steps": q.planned_steps or "?",
                    "starts in": fmt_seconds(q.starts_in, "unknown"),
                    "takes": fmt_seconds(q.predicted_seconds, "unknown"),
                }
                for q in line
            ],
            hide_index=True,
        )
        target = st.selectbox("Queued run", [q.name for q in line], key="admin_cancel_target")
        if st.button("Take out of the queue", icon=":material/playlist_remove:"):  # its own line: never cut off
            with friendly_errors("Unqueueing"):
                Q.stop_run(policy.run_folder(target), None, admin=True)
                st.toast(f"{target} left the queue.")
                st.rerun()
    else:
        st.caption("Queue: empty.")


def models_section() -> None:
    rows = model_status()
    if not rows:
        st.caption("No model is loaded.")
    else:
        st.dataframe([{**r, "bytes": fmt_bytes(r["bytes"]), "adapter bytes": fmt_bytes(r["adapter bytes"])}
                      for r in rows], hide_index=True)
        st.caption(
            f"Weights in memory: {fmt_bytes(sum(r['bytes'] for r in rows))} "
            "(true bytes, quantization constants included)."
        )
        labels = [f"{r['model']}@{r['precision']}" for r in rows]
        pick = st.selectbox("Loaded model", labels, key="admin_free_target")
        if st.button("Free", icon=":material/delete:",
                     help="Drop this model and hand its memory back, if nobody holds it (a session's playground "
                          "or running work). Held models stay: the holder's work never loses its model."):
            spec, _, precision = pick.rpartition("@")
            n, in_use = free_model(spec, precision)
            held = next((r["held by"] for r in rows if r["model"] == spec and r["precision"] == precision), 0)
            # said on the page, where the button is, until the next click (a toast was lost in the rerun)
            st.session_state["admin_free_said"] = (
                ("warning", f"{pick} is in use (held by {held} session(s) or running work): it stays loaded. It "
                            "can be freed once its holders let go (they leave the playground or their work ends).")
                if in_use else ("success", f"Freed {pick} ({n} model(s)): its memory is handed back."))
            st.rerun()  # the table without the freed model; the message is kept in session state
    said = st.session_state.get("admin_free_said")
    if said:
        getattr(st, said[0])(said[1], icon=":material/info:")
    for q in shared_models().status().queues:
        running = q["running"]
        st.caption(f"{q['device'].upper()} work queue: "
                   + (f"running {running['label']} for {running['owner'][:8]} ({running['elapsed']:.0f} s)"
                      if running else "idle")
                   + f", {len(q['waiting'])} waiting.")
    preloader = server_services().preloader
    if server_services().preload_error:
        st.error(f"QLORA_LAB_PRELOAD: {server_services().preload_error}", icon=":material/error:")
    elif preloader is not None and preloader.items:
        st.caption(
            "Preloaded at start-up (QLORA_LAB_PRELOAD): "
            + " · ".join(
                f"`{i.label}` {i.status}"
                + (f" in {i.seconds:.0f} s" if i.seconds is not None else "")
                + (f" ({i.error})" if i.error else "")
                for i in preloader.items
            )
        )


def limits_section() -> None:
    """Public mode's input limits and the per-request limits (environment variables, read at start)."""
    public = policy.public_mode()
    st.markdown(f"**Public mode:** {'on' if public else 'off'} (QLORA_LAB_PUBLIC; on by default inside a Space).")
    lim = policy.limits()
    rows = [{"limit": r["name"], "value": fmt_limit(r["name"], r["value"]), "set with": r["env"], "meaning": r["help"]}
            for r in [*lim.rows(), *shared_models().limits.rows()]]
    st.dataframe(rows, hide_index=True)
    if server_services().watcher.last_error:
        st.warning(f"Queue watcher: {server_services().watcher.last_error}", icon=":material/warning:")


@st.fragment(run_every=3)
def dashboard() -> None:
    left, right = st.columns(2)
    with left:
        st.subheader("Sessions")
        sessions_section()
        st.subheader("Training")
        training_section()
    with right:
        st.subheader("Loaded models")
        models_section()
        st.subheader("Limits")
        limits_section()


dashboard()
