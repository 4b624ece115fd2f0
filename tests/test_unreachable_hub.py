"""An unreachable Hub id (issue 20, bug 1): refused at once, in plain words, in public and local mode.

The Hub is out of reach the way the push tests make it so: HF_ENDPOINT on a localhost port nobody listens
on (a real refused connection, no stub of the socket). huggingface_hub itself is spied on: when the lab
already knows the Hub cannot answer, it must not start a request whose retries take ~25 s."""

from __future__ import annotations

import re
import socket
import threading

import huggingface_hub
import pytest
from huggingface_hub import constants

from lab.errors import LabError
from lab.models import hub, public
from lab.models.reader import read_architecture
from lab.models.sources import resolve_source
from lab.tasks import bounded

HUB_ID = "meta-llama/Llama-3.2-1B"
CLASS_NAME = re.compile(r"\b[A-Z]\w+(Error|Exception|Enabled)\b")  # e.g. LocalEntryNotFoundError


@pytest.fixture
def requests(monkeypatch, tmp_path):
    """An empty Hub cache, HF_ENDPOINT on a closed port, and every Hub request the lab starts, recorded."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(hub, "_probe", {})
    public._admitted.cache_clear()
    started: list[str] = []

    def hf_hub_download(repo_id, filename, **kw):
        started.append(f"download {repo_id}/{filename}")
        raise AssertionError("a Hub request was started although the Hub is known to be out of reach")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return started


@pytest.mark.parametrize("mode", ["public", "local"])
def test_an_unreachable_hub_id_is_refused_at_once_in_plain_words(requests, monkeypatch, mode):
    monkeypatch.setenv("QLORA_LAB_PUBLIC", "1" if mode == "public" else "0")
    for ask in (lambda: resolve_source(HUB_ID), lambda: read_architecture(HUB_ID)):  # a field, the calculator
        with pytest.raises(LabError) as e:
            ask()
        message = str(e.value)
        assert "cannot reach the Hugging Face Hub" in message and HUB_ID in message
        assert "'embedded'" in message  # what to pick instead
        assert not CLASS_NAME.search(message), message
    assert requests == []  # no request started, so no retries to wait for


def test_a_hub_that_does_not_answer_is_given_up_on_and_holds_nothing(monkeypatch, tmp_path):
    """Reachable but silent (a stuck proxy): the check answers after HUB_SECONDS; the request it gave up on
    keeps nothing of the lab's, so the next check (here: a config read, which shares a 2-slot limit) runs."""
    monkeypatch.setenv("QLORA_LAB_PUBLIC", "1")
    monkeypatch.delenv("QLORA_LAB_HUB_ALLOW", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=2.0: True)
    monkeypatch.setattr(public, "HUB_SECONDS", 0.2)
    public._admitted.cache_clear()
    release, asked = threading.Event(), []

    def silent_hub(repo_id, filename, **kw):
        asked.append(kw.get("etag_timeout"))
        release.wait(30)
        raise OSError("gave up")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", silent_hub)
    try:
        for _ in range(3):  # three replaced inputs in a row: each answered, none waits for the one before
            with pytest.raises(LabError, match=r"did not answer within 0 s about 'meta-llama/Llama-3.2-1B'") as e:
                resolve_source(HUB_ID)
            assert not CLASS_NAME.search(str(e.value))
        assert asked == [0.2, 0.2, 0.2]  # huggingface_hub's own per-request timeout is bounded too
        assert [bounded(lambda: 7, 1.0, "Reading config.json") for _ in range(3)] == [7, 7, 7]
    finally:
        release.set()


def test_a_missing_hub_model_is_named_in_plain_words(monkeypatch):
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    class Response:  # what huggingface_hub's HTTP errors carry
        status_code, headers, request = 404, {}, None

    for error, words in ((LocalEntryNotFoundError("x"), "could not be reached"),
                         (RepositoryNotFoundError("x", response=Response()), "no such model"),
                         (GatedRepoError("x", response=Response()), "gated")):
        text = hub.fetch_failure(error)
        assert words in text and not CLASS_NAME.search(text)
