"""Cookies: what a browser keeps across sessions (a refresh is a new Streamlit session): the owner token of the
runs it started, and the instructor's sign-in. Streamlit reads cookies (st.context.cookies) but cannot set one."""

from __future__ import annotations

import re

import streamlit as st

from lab.serve.admin import admin_enabled, check_admin_digest
from lab.training import owners

OWNER_COOKIE = "qlora_lab_owner"  # keeps the owner token across a refresh (a new session, the same browser)
ADMIN_COOKIE = "qlora_lab_admin"  # the instructor's sign-in: a digest of the token, never the token itself
COOKIE_DAYS = 2  # a workshop's length with margin


def read_cookie(name: str) -> str | None:
    """A cookie the browser sent when this session connected (st.context.cookies; None outside a browser)."""
    try:
        value = st.context.cookies.get(name)
    except Exception:  # bare script runs have no request to read
        return None
    return value if isinstance(value, str) else None  # AppTest's context answers with mocks


def set_cookie(name: str, value: str) -> None:
    """Store a cookie in this browser (read back by the next session with read_cookie). Streamlit reads
    cookies but has no API to set one, so a one-line script sets it: no visible element, same-site only."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", value):  # only values that need no quoting reach the script
        raise ValueError(f"set_cookie: unsafe cookie value for {name}")
    st.html(f"<script>document.cookie = '{name}={value}; path=/; max-age={COOKIE_DAYS * 86400}; "
            "SameSite=Strict';</script>", unsafe_allow_javascript=True)


def owner_token() -> str:
    """This session's owner token: runs it queues are its own (lab.training.owners). Never shown. The browser
    keeps it in a cookie (remember_owner), so after a refresh the person can still stop their own run."""
    if "lab_owner_token" not in st.session_state:
        kept = read_cookie(OWNER_COOKIE)
        valid = kept is not None and re.fullmatch(r"[A-Za-z0-9_-]{32}", kept)
        st.session_state["lab_owner_token"] = kept if valid else owners.new_token()
    return st.session_state["lab_owner_token"]


def remember_owner() -> None:
    """Once per session, store the owner token in the browser (drawn in the sidebar: an element without size)."""
    token = owner_token()
    if st.session_state.get("lab_owner_cookie") != token and read_cookie(OWNER_COOKIE) != token:
        set_cookie(OWNER_COOKIE, token)
    st.session_state["lab_owner_cookie"] = token


def is_admin() -> bool:
    """This session typed the instructor's token on the instructor's page, or this browser did before (a
    cookie holding the token's digest: the instructor does not type it again after every refresh)."""
    if not admin_enabled():
        return False
    if not st.session_state.get("lab_admin") and check_admin_digest(read_cookie(ADMIN_COOKIE)):
        st.session_state["lab_admin"] = True
    return bool(st.session_state.get("lab_admin"))
