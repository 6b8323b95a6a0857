"""Opening a repository named in the agent's configuration (`[repositories.NAME]`, ops/config.py).

One function for the agent, drills and the command line: `open_config_repo(cfg, name)` reads the
password from its file or variable, the backend's extra settings from `env_file`, and opens the
repository. Secrets go straight to the backend, never to argv or a log line.

`env_file` holds KEY=VALUE lines (blank lines and `#` comments allowed, an optional `export `):
- for http(s) repositories `CERMIN_TOKEN` (or `CERMIN_TOKEN_FILE`) is the server token;
- for s3: repositories `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
  `AWS_REGION`. The S3 driver reads them from the process environment, so they are put there — and
  two repositories with different S3 credentials cannot be open in one process: the second one is
  refused with a clear error rather than silently given the first one's keys.
"""

from __future__ import annotations

import os
import re
import threading

from cermin.errors import UsageError
from cermin.ops.config import Config, ConfigError, Repo, read_secret
from cermin.repo.repository import Repository

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION")
_env_lock = threading.Lock()


def read_env_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines; errors name the file and line, never the value."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the env file {path}: {getattr(e, 'strerror', None) or e}") from None
    out: dict[str, str] = {}
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        s = s.removeprefix("export ").lstrip()
        key, eq, value = s.partition("=")
        key = key.strip()
        if not eq or not _KEY.match(key):
            raise ConfigError(f"{path}:{no}: not a KEY=VALUE line")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def repo_entry(cfg: Config, name: str) -> Repo:
    try:
        return cfg.repositories[name]
    except KeyError:
        known = ", ".join(sorted(cfg.repositories)) or "none"
        raise ConfigError(f"no repository named {name!r} in {cfg.path} (known: {known})") from None


def config_backend(entry: Repo, name: str = "", environ=None):
    """The backend of a configured repository, its env_file applied."""
    from cermin.backend import open_backend

    environ = os.environ if environ is None else environ
    extra = read_env_file(entry.env_file) if entry.env_file else {}
    url = entry.url
    if url.startswith(("http://", "https://")):
        token = extra.get("CERMIN_TOKEN", "")
        if not token and extra.get("CERMIN_TOKEN_FILE"):
            token = read_secret(extra["CERMIN_TOKEN_FILE"], "", environ, f"token of repository {name}")
        if token:
            from cermin.backend.http import HttpBackend
            from cermin.backend.retry import RetryBackend

            return RetryBackend(HttpBackend(url, token))
    elif url.startswith("s3:"):
        _apply_s3_env({k: v for k, v in extra.items() if k in _S3_KEYS}, name)
    return open_backend(url)


def _apply_s3_env(creds: dict[str, str], name: str) -> None:
    """Put an S3 repository's credentials where the S3 driver reads them (the process environment)."""
    if not creds:
        return
    with _env_lock:
        clash = [k for k, v in creds.items() if os.environ.get(k) not in (None, "", v)]
        if clash:
            raise UsageError(
                f"repository {name}: its env_file sets {', '.join(sorted(clash))} differently from the "
                "environment (or another S3 repository open in this process): one S3 credential per process"
            )
        os.environ.update(creds)


def open_config_repo(cfg: Config, name: str, environ=None, load_index: bool = False, on_warning=None) -> Repository:
    """Open the repository `[repositories.NAME]` of the configuration (RepositoryNotFound, WrongPassword,
    BackendUnavailable, ConfigError on a missing secret)."""
    entry = repo_entry(cfg, name)
    password = read_secret(entry.password_file, entry.password_env, environ, f"password of repository {name}")
    backend = config_backend(entry, name, environ)
    config = Repository.read_config(backend)  # a missing repository is named before the password is tried
    repo = Repository.open(backend, password.encode(), config)
    if on_warning is not None:
        for w in repo.warnings:
            on_warning(w)
        repo.on_warning = on_warning
    if load_index:
        repo.load_index()
    return repo


def copy_repo_name(cfg: Config, system, copy: str) -> str:
    """The repository name holding `copy` (primary, immutable, mirror) of a system."""
    from cermin.ops.config import COPY_KINDS

    if copy not in COPY_KINDS:
        raise UsageError(f"unknown copy {copy!r} (one of {', '.join(COPY_KINDS)})")
    name = system.copies.get(copy)
    if not name:
        have = ", ".join(k for k in COPY_KINDS if system.copies.get(k)) or "none"
        raise ConfigError(f"system {system.id} has no {copy} copy (it has: {have})")
    return name
