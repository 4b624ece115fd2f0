"""Push a run's adapter (or its merged export) to the Hugging Face Hub with huggingface_hub.

`push_run` validates everything it can before the network (the repo name, the folder, offline mode, a token
from HF_TOKEN or the login cache), refreshes the model card so its snippet names the repo, then calls
`create_repo` and `upload_folder`. Whatever goes wrong comes back as one LabError that says what to do:
offline, not logged in, token refused, no write access, bad repo name.
"""

from __future__ import annotations

from pathlib import Path

from lab import policy
from lab.errors import LabError
from lab.paths import RUN_FILE, runs_dir
from lab.publish.card import record_push, write_merged_card, write_run_card

# Never uploaded: training state and local bookkeeping (checkpoints hold optimizer states, the event log and
# process log hold local paths and pids), stop/lock files, half-written files, and the merged export (pushed on
# its own with --merged: it is a whole model).
IGNORE_PATTERNS = ["checkpoints/*", "merged/*", "events.jsonl", "process.log", "STOP", "*.lock", ".train.*",
                   "*.tmp", "hub.json", "command.txt", "queued.json", "launched.json", "training_args.bin"]


def resolve_run(run: str | Path) -> Path:
    """A run folder from a path or a run name in runs/."""
    text = str(run).strip()
    for candidate in (Path(text).expanduser(), runs_dir() / text):
        if text and (candidate / RUN_FILE).is_file():
            return candidate.resolve()
    raise LabError(f"No run folder {text!r} (a folder with {RUN_FILE}, or a run name in {runs_dir()}).",
                   "Give the path of a run folder, or a name from the Training page's run history.")


def check_repo_id(repo_id: str) -> str:
    # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = (repo_id or "").strip()
    if repo_id.count("/") != 1:
        raise LabError(
            f"Repo name {repo_id!r} is not owner/name.",
            "Give your user or organisation and a name, e.g. alice/smollm2-style-lora.",
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise LabError(
            f"Repo name {repo_id!r} is not valid on the Hub: {str(e).split('.')[0]}.",
            "Use letters, digits, '-', '_' and '.', at most 96 characters, e.g. alice/smollm2-style-lora.",
        ) from None
    return repo_id


def push_folder(run_dir: Path, merged: bool) -> Path:
    if not merged:
        if not (run_dir / "adapter_config.json").is_file():
            raise LabError(f"{run_dir.name} has no adapter (adapter_config.json): the run saved nothing to push.",
                           "Push a finished or stopped run.")
        return run_dir
    folder = run_dir / "merged"
    if not (folder / "config.json").is_file():
        raise LabError(f"{run_dir.name} has no merged export ({folder} is missing).",
                       "Merge it first: the Training page's Merge & export, or train with --merge.")
    return folder


def files_to_upload(folder: Path) -> list[str]:
    """The files `upload_folder` sends for `folder` (the same filter huggingface_hub applies), sorted."""
    # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
    from huggingface_hub.utils import filter_repo_objects

    paths = [p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file()]
    return sorted(filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS))


def hub_token(given: str | None = None) -> str:
    """The token to push with: the one a person typed, else HF_TOKEN or the login cache. On a public server
    only a typed token counts: the server's own token must never push on a visitor's behalf."""
    # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
    from huggingface_hub import get_token

    if given and given.strip():
        return given.strip()
    if policy.public_mode():
        raise LabError("On a public server, pushing uses your own Hugging Face token, never the server's.",
                       "Paste a token with write access (huggingface.co/settings/tokens) and push again.")
    token = get_token()
    if not token:
        raise LabError("Not logged in to the Hugging Face Hub: no token in HF_TOKEN or the login cache.",
                       "Run `hf auth login` (or set HF_TOKEN to a token with write access), then push again.")
    return token


def _is_network_error(e: BaseException) -> bool:
    # huggingface_hub 2.x talks httpx2, whose connection failures are TransportErrors (huggingface_hub itself
    # catches that class); older stacks raised ConnectionError / TimeoutError.
    return isinstance(e, (ConnectionError, TimeoutError)) or any(
        c.__name__ == "TransportError" for c in type(e).__mro__
    )


def hub_failure(e: BaseException, repo_id: str) -> LabError:
    """One LabError for whatever create_repo/upload_folder raised."""
    # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled):
        return LabError(
            "Cannot push: offline mode is on (HF_HUB_OFFLINE=1).",
            "Unset HF_HUB_OFFLINE on a machine with network access.",
        )
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        code = e.response.status_code
        if code == 401:
            return LabError(f"The Hub refused the token (401 unauthorised) for {repo_id}.",
                            "The token is invalid or expired: `hf auth login` again or set HF_TOKEN to a valid token.")
        if code == 403:
            return LabError(f"No write access to {repo_id} (403 forbidden).",
                            "Use a token with write permission, and your own user or an organisation you can write to.")
        return LabError(f"The Hub answered {code} for {repo_id}: {str(e).splitlines()[0][:200]}")
    if _is_network_error(e):
        return LabError(f"Cannot reach the Hub at {constants.ENDPOINT} (offline? {type(e).__name__}).",
                        "Check the network connection (and HF_ENDPOINT), then push again.")
    return LabError(f"Pushing to {repo_id} failed: {type(e).__name__}: {str(e)[:200]}")


def push_run(run: str | Path, repo_id: str, private: bool = False, merged: bool = False,
             token: str | None = None) -> dict:
    """Upload a run's adapter folder (or, with `merged`, its merged export) to `repo_id`; returns what was sent.
    `token`: a token the person typed (required on a public server; see `hub_token`)."""
    # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    repo_id = check_repo_id(repo_id)
    run_dir = resolve_run(run)
    folder = push_folder(run_dir, merged)
    if constants.is_offline_mode():
        raise hub_failure(OfflineModeIsEnabled(), repo_id)
    token = hub_token(token)
    def card(repo: str | None) -> None:  # the card's snippet loads from the repo it is pushed to
        if merged:
            write_merged_card(run_dir, folder, repo_id=repo)
        else:
            write_run_card(run_dir, repo_id=repo)

    card(repo_id)
    files = files_to_upload(folder)
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            ignore_patterns=IGNORE_PATTERNS,
            commit_message=f"Upload {'merged model' if merged else 'adapter'} {run_dir.name} (QLoRA Lab)",
        )
    except Exception as e:  # network, HTTP, auth: all become one message
        card(None)  # not pushed: the card goes back to naming where it really is
        raise hub_failure(e, repo_id) from e
    record_push(run_dir, repo_id, str(url), private, merged)
    return {"repo_id": repo_id, "url": str(url), "commit_url": getattr(commit, "commit_url", str(commit)),
            "folder": str(folder), "files": files, "private": private, "merged": merged}
