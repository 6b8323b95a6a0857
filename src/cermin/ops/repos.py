"""Opening a repository named in the agent's configuration (`[repositories.NAME]`, ops/config.py).

One function for the agent, drills and the command line: `open_config_repo(cfg, name)` reads the
password from its file or variable, the backend's extra settings from `env_file`, and opens the
repository. Secrets go straight to the backend, never to argv or a log line.

`env_file` holds KEY=VALUE lines (blank lines and `#` comments allowed, an optional `export `):
- for http(s) repositories `CERMIN_TOKEN` (or `CERMIN_TOKEN_FILE`) is the server token;
- for s3: repositories `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
  `AWS_REGION`. They are handed to that repository's S3 driver as its own `S3Credentials`, never put
  in the process environment, so one process (the agent) holds any number of repositories with
  different S3 identities. An env_file naming only `AWS_REGION` keeps the environment's keys.
  Without any of them the driver reads the process environment, as the command line does.
"""

from __future__ import annotations

import os
import re

from cermin.errors import UsageError
from cermin.ops.config import Config, ConfigError, Repo, read_secret
from cermin.repo.repository import Repository

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION")


def read_env_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines; errors name the file and line, never the value."""
    return {k: v for k, (_, v) in _read_env_lines(path).items()}


def _read_env_lines(path: str) -> dict[str, tuple[int, str]]:
    """KEY -> (line number, value) of an env file (the last line wins)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the env file {path}: {getattr(e, 'strerror', None) or e}") from None
    out: dict[str, tuple[int, str]] = {}
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
        out[key] = (no, value)
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
    lines = _read_env_lines(entry.env_file) if entry.env_file else {}
    extra = {k: v for k, (_, v) in lines.items()}
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
        return open_backend(url, credentials=_s3_credentials(entry.env_file, lines, name, environ))
    return open_backend(url)


def _s3_credentials(path: str, lines: dict[str, tuple[int, str]], name: str, environ):
    """The S3 identity an env_file gives its repository (None: the driver reads the environment).
    Errors name the file, the line and the variable, never a value."""
    from cermin.backend.s3 import S3Credentials

    # An empty session token or region is no setting (as in the environment); an empty key is a mistake.
    got = {k: lines[k] for k in _S3_KEYS if k in lines and (lines[k][1] or k in _S3_KEYS[:2])}
    if not got:
        return None
    whose = f" (repository {name})" if name else ""
    for k, (no, value) in got.items():
        if not value:
            raise ConfigError(f"{path}:{no}: {k} is empty{whose}")
    value = {k: v for k, (_, v) in got.items()}
    key, secret = value.get("AWS_ACCESS_KEY_ID", ""), value.get("AWS_SECRET_ACCESS_KEY", "")
    region = value.get("AWS_REGION", "")
    if not key and not secret and "AWS_SESSION_TOKEN" not in value:
        # Only a region: the environment's keys, used in that region (the environment is not changed).
        key, secret = environ.get("AWS_ACCESS_KEY_ID", ""), environ.get("AWS_SECRET_ACCESS_KEY", "")
        if not (key and secret):
            raise ConfigError(
                f"{path}:{got['AWS_REGION'][0]}: AWS_REGION is set but neither this file nor the environment "
                f"gives AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY{whose}"
            )
        return S3Credentials(key, secret, environ.get("AWS_SESSION_TOKEN", ""), region)
    for have, need in (
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
        ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
        ("AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"),
        ("AWS_SESSION_TOKEN", "AWS_SECRET_ACCESS_KEY"),
    ):
        if have in got and need not in got:
            raise ConfigError(f"{path}:{got[have][0]}: {have} is set but {need} is missing{whose}")
    return S3Credentials(key, secret, value.get("AWS_SESSION_TOKEN", ""), region)


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
