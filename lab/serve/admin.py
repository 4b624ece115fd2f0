"""The instructor's token (QLORA_LAB_ADMIN_TOKEN): the instructor's page exists only when it is
set, and opens only for someone who types it. Compared in constant time, so response times say
nothing about how much of a guess was right."""

from __future__ import annotations

import hmac
import os

ENV = "QLORA_LAB_ADMIN_TOKEN"
MIN_LENGTH = 16


def admin_enabled(env: dict | None = None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get(ENV, "").strip())


def check_admin_token(given: str | None, env: dict | None = None) -> bool:
    env = os.environ if env is None else env
    expected = env.get(ENV, "").strip()
    if not expected or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def weak_token(env: dict | None = None) -> bool:
    """A token shorter than MIN_LENGTH characters can be guessed: the page says so."""
    env = os.environ if env is None else env
    return admin_enabled(env) and len(env.get(ENV, "").strip()) < MIN_LENGTH


def admin_digest(env: dict | None = None) -> str | None:
    """What the instructor's browser keeps after signing in (a cookie): an HMAC of the token, so the token itself
    is never stored, and a new token (a restart with another QLORA_LAB_ADMIN_TOKEN) signs everyone out."""
    env = os.environ if env is None else env
    expected = env.get(ENV, "").strip()
    if not expected:
        return None
    return hmac.new(expected.encode(), b"qlora-lab-instructor-cookie", "sha256").hexdigest()


def check_admin_digest(given: str | None, env: dict | None = None) -> bool:
    expected = admin_digest(env)
    if not expected or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())
