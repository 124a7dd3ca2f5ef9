"""What a Ray job submission of raft consists of, decided without talking to a cluster. Pure.

``raft submit`` (in ``raft.jobs``) turns a spec file into a Ray job: an entrypoint that
runs ``raft train`` on the cluster, a runtime environment that ships the working
directory, and a submission id a person can read. The choices live here so they are
unit-tested; ``raft.jobs`` only talks to the Jobs API.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

import yaml

# Ray job ids allow letters, digits, '-' and '_'.
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
TOKEN_FILE = Path("~/.ray/auth_token")

# What a finished job's status means for `raft submit`'s own exit code when Ray does not
# report the driver's exit code (a stopped job, a driver that never started).
STATUS_EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 130}


class SubmissionError(ValueError):
    """The submission cannot be built as asked (bad paths, bad runtime env)."""


def submission_id(run_name: str, now: float | None = None) -> str:
    """``raft-<run name>-<UTC time>``: says which run it is, unique per submission."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    safe = _UNSAFE.sub("-", run_name).strip("-") or "run"
    return f"raft-{safe}-{stamp}"


def relative_spec_path(spec_file: str | os.PathLike, working_dir: str | os.PathLike) -> str:
    """The spec's path inside the working directory: the job runs from its uploaded copy."""
    spec = Path(spec_file).absolute()
    root = Path(working_dir).absolute()
    if not root.is_dir():
        raise SubmissionError(f"working directory {str(working_dir)!r} is not a folder")
    try:
        return spec.relative_to(root).as_posix()
    except ValueError:
        raise SubmissionError(
            f"{spec_file} is not inside the working directory {root}: the job runs from an "
            "uploaded copy of that folder, so the spec must be in it (use --working-dir)"
        ) from None


def entrypoint(
    spec_in_working_dir: str, overrides: list[str] | tuple[str, ...], command: str = "train"
) -> str:
    """The shell command the job runs on the cluster's head node: ``raft train``, or
    ``raft tune`` for a search."""
    if command not in ("train", "tune"):
        raise SubmissionError(f"a job runs raft train or raft tune, not raft {command}")
    return shlex.join(["raft", command, spec_in_working_dir, *overrides])


def runtime_env(runtime_env_file: str | os.PathLike | None, working_dir: str | os.PathLike) -> dict[str, Any]:
    """The runtime env YAML (as ``ray job submit --runtime-env`` reads it) plus the working dir."""
    env: dict[str, Any] = {}
    if runtime_env_file is not None:
        path = Path(runtime_env_file)
        if not path.is_file():
            raise SubmissionError(f"runtime env file {str(path)!r} does not exist")
        try:
            env = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise SubmissionError(f"runtime env file {path} is not valid YAML: {error}") from None
        if not isinstance(env, dict):
            raise SubmissionError(f"runtime env file {path} must hold a mapping, not {type(env).__name__}")
    return env | {"working_dir": str(Path(working_dir).absolute())}


def auth_token(explicit: str | None = None, environ: dict[str, str] | None = None) -> str | None:
    """The Ray auth token to send, looked up the way Ray itself does: ``--token``, then
    ``RAY_AUTH_TOKEN``, then the file ``RAY_AUTH_TOKEN_PATH`` names, then ~/.ray/auth_token."""
    environ = os.environ if environ is None else environ
    if explicit:
        return explicit.strip()
    if environ.get("RAY_AUTH_TOKEN"):
        return environ["RAY_AUTH_TOKEN"].strip()
    path = Path(environ.get("RAY_AUTH_TOKEN_PATH") or TOKEN_FILE).expanduser()
    return path.read_text().strip() if path.is_file() else None


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def exit_code(status: str, driver_exit_code: int | None) -> int:
    """``raft submit``'s exit code: the job driver's own, else one that matches its status."""
    if driver_exit_code is not None:
        return int(driver_exit_code)
    return STATUS_EXIT_CODES.get(status, 1)


def dashboard_address(address: str) -> str:
    """``HEAD:8265`` or ``http://HEAD:8265`` → the URL the Jobs API answers on."""
    if address.startswith(("ray://", "auto")):
        raise SubmissionError(
            f"--address {address!r}: raft submit talks to the Jobs API, give the dashboard "
            "address instead, e.g. http://HEAD:8265"
        )
    return address if "://" in address else f"http://{address}"
