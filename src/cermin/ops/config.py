"""The agent's TOML configuration: tenants -> systems -> sources, policy classes, repositories (docs/agent.md).

`load_config(path)` parses and validates the whole file and returns a `Config`; every problem is a
`ConfigError` naming the file, the line and the key (`cermin.toml:23: tenants.imigrasi.systems.db.class:
unknown class 'strategic' (known: rendah, strategis, tinggi)`). Nothing here touches a repository,
a database or the network: the result is a plan that `cermin config check` prints and the agent runs.

Secrets never live in the TOML: repository passwords, database passwords and notification URLs come
from `*_file` or `*_env` keys; a key that looks like an inline secret is refused.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from typing import Any

import msgspec

from cermin.errors import EXIT_USAGE, CerminError

COPY_KINDS = ("primary", "immutable", "mirror")
SOURCE_TYPES = ("paths", "postgres", "sqlite", "command")
CHECK_TYPES = ("postgres", "sqlite", "command", "files")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SECRET_KEYS = re.compile(r"^(password|passwd|secret|token|api_key|access_key|secret_key|credentials?)$", re.I)


class ConfigError(CerminError):
    exit_code = EXIT_USAGE


# ---- durations ------------------------------------------------------------------------------------
_DUR = re.compile(r"(\d{1,12})(s|min|h|d|w)")
MAX_DURATION = 3653 * 86400  # ten years: beyond it a schedule or timeout is a typo (and overflows datetimes)
_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """Seconds of '90s', '15min', '1h30min', '7d', '2w'. 'm' is refused: minutes or months?"""
    if not isinstance(text, str) or not text:
        raise ValueError("a duration is a string such as '15min', '4h', '7d'")
    pos, total = 0, 0
    for m in _DUR.finditer(text):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or total <= 0:
        hint = " ('m' is ambiguous: write 'min')" if re.search(r"\dm(?!in)", text) else ""
        raise ValueError(f"bad duration {text!r}: use s, min, h, d, w (e.g. '15min', '4h', '7d'){hint}")
    if total > MAX_DURATION:
        raise ValueError(f"duration {text!r} is longer than ten years")
    return total


def fmt_duration(seconds: float, parts: int = 0) -> str:
    """'1h30min', '7d', '45s': the largest units first, as parse_duration reads them; `parts` > 0 keeps
    only that many units, rounded down (an age: '2d6h', not '2d6h13min8s')."""
    s = int(round(seconds))
    if s <= 0:
        return "0s"
    if s % (7 * 86400) == 0:
        return f"{s // (7 * 86400)}w"
    out = []
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if s >= n:
            out.append(f"{s // n}{unit}")
            s %= n
    return "".join(out[:parts] if parts > 0 else out)


# ---- the schema (msgspec Structs: unknown keys are errors) -----------------------------------------
class _S(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class Retention(_S):
    """forget's keep rules (`within` in forget's syntax: 1y6m, 30d, 12h)."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: str = ""


class PolicyClass(_S):
    rpo: str  # newest good backup never older than this
    rto: str  # a drill must restore and verify within this
    retention: Retention
    copies: list[str] = msgspec.field(default_factory=lambda: ["primary"])
    drill_every: str = "30d"
    verify_every: str = "30d"  # every pack read within this (rotating check --read-data-subset)
    priority: int = 100  # lower runs first (recovery order)
    description: str = ""


DEFAULT_CLASSES: dict[str, dict[str, Any]] = {
    # Strategis: national services (immigration, population registry): at most an hour lost, back in 4 h.
    "strategis": {
        "rpo": "1h",
        "rto": "4h",
        "retention": {"last": 48, "daily": 30, "weekly": 12, "monthly": 24, "within": "2d"},
        "copies": ["primary", "immutable", "mirror"],
        "drill_every": "7d",
        "verify_every": "30d",
        "priority": 10,
        "description": "critical national services",
    },
    "tinggi": {
        "rpo": "4h",
        "rto": "24h",
        "retention": {"last": 24, "daily": 14, "weekly": 8, "monthly": 12},
        "copies": ["primary", "immutable"],
        "drill_every": "30d",
        "verify_every": "60d",
        "priority": 50,
        "description": "important services",
    },
    "rendah": {
        "rpo": "24h",
        "rto": "72h",
        "retention": {"last": 7, "daily": 7, "weekly": 4, "monthly": 6},
        "copies": ["primary"],
        "drill_every": "90d",
        "verify_every": "90d",
        "priority": 90,
        "description": "everything else",
    },
}


class Repo(_S):
    url: str  # a directory, s3:http://host:port/bucket/prefix, or http(s)://server/tenant
    password_file: str = ""
    password_env: str = ""
    kind: str = ""  # primary | immutable | mirror: what it may serve as (checked against the system's use)
    env_file: str = ""  # KEY=VALUE lines (S3 credentials, tokens) given to the repository's backend


class Source(_S):
    type: str
    name: str = ""  # unique per system; default: the type (or the file name for sqlite)
    # paths
    paths: list[str] = []
    exclude: list[str] = []
    one_file_system: bool = False
    # postgres
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    database: str = ""
    password_file: str = ""
    password_env: str = ""
    dump_options: list[str] = []
    # sqlite
    path: str = ""
    # command
    command: list[str] = []
    filename: str = ""  # name of the stdin snapshot's file (command, postgres, sqlite)
    timeout: str = "6h"


class Check(_S):
    type: str
    name: str = ""
    query: str = ""  # postgres/sqlite: must return at least one row
    source: str = ""  # which source's restored data the check reads (default: the only one of its type)
    command: list[str] = []  # command: runs with {restore_dir} substituted, must exit 0
    min_files: int = 0  # files: the restored tree holds at least this many files
    timeout: str = "30min"
    # postgres: where the scratch database is made and the dump loaded — each defaults to the source's;
    # the source's password only when host, port and user are the source's too (ops/drillchecks.py)
    host: str = ""
    port: int = 0
    user: str = ""
    password_file: str = ""
    password_env: str = ""
    database: str = ""  # connected to for CREATE/DROP DATABASE (default: postgres, the source's, template1)


class Hooks(_S):
    pre: list[list[str]] = []
    post: list[list[str]] = []
    timeout: str = "30min"


class System(_S):
    policy: str = msgspec.field(name="class")
    sources: list[Source] = []
    primary: str = ""
    immutable: str = ""
    mirror: str = ""
    schedule: str = ""  # cron expression; default derived from the class RPO
    checks: list[Check] = []
    hooks: Hooks = msgspec.field(default_factory=Hooks)
    hostname: str = ""  # snapshot hostname; default "<tenant>.<system>"
    description: str = ""


class Tenant(_S):
    name: str = ""
    systems: dict[str, dict] = {}  # converted one by one (msgspec hides dict keys in its error paths)
    notify_file: str = ""  # apprise URLs of the tenant's own contacts, one per line


class Agent(_S):
    state: str = ""  # SQLAlchemy URL; default sqlite:///<workdir>/state.db
    state_env: str = ""  # or read the URL (it may hold a password) from this variable
    workdir: str = "/var/lib/cermin"
    key_file: str = ""  # Ed25519 key signing drill reports; default <workdir>/agent.key
    parallel: int = 2  # systems worked on at once by one agent
    claim_ttl: str = "15min"  # a dead agent's claim on a system expires after this
    retries: int = 3
    retry_backoff: str = "1min"
    notify_file: str = ""  # apprise URLs, one per line
    notify_env: str = ""
    name: str = ""  # agent name in the state store; default the host name


class Document(_S):
    agent: dict = {}
    classes: dict[str, dict] = {}
    repositories: dict[str, dict] = {}
    tenants: dict[str, dict] = {}


# ---- the resolved plan ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedClass:
    name: str
    rpo: int  # seconds
    rto: int
    retention: Retention
    copies: tuple[str, ...]
    drill_every: int
    verify_every: int
    priority: int
    description: str


@dataclass(frozen=True)
class ResolvedSystem:
    tenant: str
    name: str
    policy: ResolvedClass
    sources: tuple[Source, ...]
    copies: dict[str, str]  # copy kind -> repository name
    schedule: str  # cron expression, or "" with `interval`
    interval: int  # seconds between backups when no cron is given (derived from the RPO)
    checks: tuple[Check, ...]
    hooks: Hooks
    hostname: str
    description: str

    @property
    def id(self) -> str:
        return f"{self.tenant}/{self.name}"


@dataclass
class Config:
    path: str
    agent: Agent
    classes: dict[str, ResolvedClass]
    repositories: dict[str, Repo]
    tenants: dict[str, Tenant]
    systems: list[ResolvedSystem]

    def system(self, ident: str) -> ResolvedSystem:
        """'tenant/system', or a system name unique across tenants."""
        hits = [s for s in self.systems if s.id == ident] or [s for s in self.systems if s.name == ident]
        if len(hits) != 1:
            known = ", ".join(s.id for s in self.systems[:20])
            why = "is ambiguous: say tenant/system" if hits else f"is not in {self.path} (known: {known})"
            raise ConfigError(f"system {ident!r} {why}")
        return hits[0]


# ---- loading --------------------------------------------------------------------------------------
def load_config(path: str, environ: dict[str, str] | None = None) -> Config:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration: {e.strerror or e}") from None
    return parse_config(raw, path, environ)


def parse_config(raw: bytes, path: str = "cermin.toml", environ: dict[str, str] | None = None) -> Config:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 (byte {e.start})") from None
    lines = _Lines(text, path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    _refuse_secrets(data, lines, ())
    doc = _conv(lines, (), data, Document)
    cfg = _resolve(doc, lines, environ if environ is not None else os.environ)
    from cermin.ops.childenv import remember

    remember(cfg)  # the children of this process (sources, hooks, checks) never see its *_env secrets
    return cfg


def _conv(lines: _Lines, at: tuple, value: Any, typ: type):
    try:
        return msgspec.convert(value, typ)
    except msgspec.ValidationError as e:
        raise lines.error_from_msgspec(str(e), at) from None


def _refuse_secrets(node: Any, lines: _Lines, at: tuple) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if _SECRET_KEYS.match(k) and not isinstance(v, (dict, list)):
                raise lines.error(
                    (*at, k), "secrets do not belong in the configuration: use password_file or password_env"
                )
            _refuse_secrets(v, lines, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _refuse_secrets(v, lines, (*at, i))


def _resolve(doc: Document, lines: _Lines, environ) -> Config:
    err = lines.error
    a = _conv(lines, ("agent",), doc.agent, Agent)
    # a class named like a default one changes only the keys it gives
    user_classes = {
        k: _conv(lines, ("classes", k), {**DEFAULT_CLASSES.get(k, {}), **v}, PolicyClass)
        for k, v in doc.classes.items()
    }
    repositories = {k: _conv(lines, ("repositories", k), v, Repo) for k, v in doc.repositories.items()}
    tenants = {k: _conv(lines, ("tenants", k), v, Tenant) for k, v in doc.tenants.items()}
    for key in ("claim_ttl", "retry_backoff"):
        _dur(lines, ("agent", key), getattr(a, key))
    if not 1 <= a.parallel <= 64:
        raise err(("agent", "parallel"), "must be 1..64")
    if not 0 <= a.retries <= 20:
        raise err(("agent", "retries"), "must be 0..20")
    if a.state and a.state_env:
        raise err(("agent", "state_env"), "give state or state_env, not both")
    if a.state and _url_has_password(a.state):
        raise err(("agent", "state"), "the URL holds a password: put it in the environment and use state_env")
    if a.notify_env and a.notify_file:
        raise err(("agent", "notify_env"), "give notify_file or notify_env, not both")

    classes: dict[str, ResolvedClass] = {}
    merged = {**{k: msgspec.convert(v, PolicyClass) for k, v in DEFAULT_CLASSES.items()}, **user_classes}
    for name, c in merged.items():
        at = ("classes", name)
        if not _NAME.match(name):
            raise err(at, "class names are lower-case letters, digits, - and _")
        bad = [k for k in c.copies if k not in COPY_KINDS]
        if bad or not c.copies or "primary" not in c.copies or len(set(c.copies)) != len(c.copies):
            raise err((*at, "copies"), f"copies are distinct kinds among {', '.join(COPY_KINDS)}, primary included")
        r = c.retention
        if any(n < 0 for n in (r.last, r.hourly, r.daily, r.weekly, r.monthly, r.yearly)):
            raise err((*at, "retention"), "keep counts cannot be negative")
        if not (r.last or r.hourly or r.daily or r.weekly or r.monthly or r.yearly or r.within):
            raise err((*at, "retention"), "keeps nothing: give at least one keep rule")
        if r.within and not re.fullmatch(r"(\d+y)?(\d+m)?(\d+d)?(\d+h)?", r.within):
            raise err((*at, "retention", "within"), f"bad duration {r.within!r}: use e.g. 1y6m, 30d, 12h")
        rpo, rto = _dur(lines, (*at, "rpo"), c.rpo), _dur(lines, (*at, "rto"), c.rto)
        if rpo < 300:
            raise err((*at, "rpo"), "must be at least 5min")
        classes[name] = ResolvedClass(
            name,
            rpo,
            rto,
            r,
            tuple(c.copies),
            _dur(lines, (*at, "drill_every"), c.drill_every),
            _dur(lines, (*at, "verify_every"), c.verify_every),
            c.priority,
            c.description,
        )

    for name, repo in repositories.items():
        at = ("repositories", name)
        if not _NAME.match(name):
            raise err(at, "repository names are lower-case letters, digits, - and _")
        if not repo.url:
            raise err((*at, "url"), "is empty")
        if _url_has_password(repo.url):
            raise err((*at, "url"), "the URL holds credentials: use env_file")
        _secret_ref(lines, at, repo.password_file, repo.password_env, environ, required=True)
        if repo.kind and repo.kind not in COPY_KINDS:
            raise err((*at, "kind"), f"must be one of {', '.join(COPY_KINDS)}")

    systems: list[ResolvedSystem] = []
    for tname, tenant in tenants.items():
        if not _NAME.match(tname):
            raise err(("tenants", tname), "tenant ids are lower-case letters, digits, - and _")
        if not tenant.systems:
            raise err(("tenants", tname), "has no systems")
        for sname, raw in tenant.systems.items():
            s = _conv(lines, ("tenants", tname, "systems", sname), raw, System)
            systems.append(_system(lines, classes, repositories, environ, tname, sname, s))
    if not systems:
        raise err(("tenants",), "no tenant system is configured")
    return Config(lines.path, a, classes, repositories, tenants, systems)


def _system(lines, classes, repos, environ, tname: str, sname: str, s: System) -> ResolvedSystem:
    err = lines.error
    at = ("tenants", tname, "systems", sname)
    if not _NAME.match(sname):
        raise err(at, "system ids are lower-case letters, digits, - and _")
    cls = classes.get(s.policy)
    if cls is None:
        raise err((*at, "class"), f"unknown class {s.policy!r} (known: {', '.join(sorted(classes))})")
    copies: dict[str, str] = {}
    for kind in COPY_KINDS:
        rname = getattr(s, kind)
        if not rname:
            if kind in cls.copies:
                raise err(at, f'class {cls.name} requires a {kind} copy: set {kind} = "<repository>"')
            continue
        repo = repos.get(rname)
        if repo is None:
            raise err((*at, kind), f"unknown repository {rname!r} (known: {', '.join(sorted(repos)) or 'none'})")
        if repo.kind and repo.kind != kind:
            raise err((*at, kind), f"repository {rname!r} is declared kind = {repo.kind!r}")
        copies[kind] = rname
    if len(set(copies.values())) != len(copies):
        raise err(at, "each copy must be a different repository")
    if not s.sources:
        raise err(at, "has no sources")
    names: set[str] = set()
    for i, src in enumerate(s.sources):
        _source(lines, environ, (*at, "sources", i), src, names)
    for i, chk in enumerate(s.checks):
        _check(lines, (*at, "checks", i), chk, s.sources)
    for kind in ("pre", "post"):
        for i, cmd in enumerate(getattr(s.hooks, kind)):
            if not cmd or not all(isinstance(x, str) and x for x in cmd):
                raise err((*at, "hooks", kind, i), "a hook is a non-empty list of arguments (no shell)")
    _dur(lines, (*at, "hooks", "timeout"), s.hooks.timeout)
    interval = 0
    if s.schedule:
        _cron(lines, (*at, "schedule"), s.schedule)
    else:
        interval = max(300, cls.rpo // 2)  # half the RPO: one missed run still meets it
    return ResolvedSystem(
        tname,
        sname,
        cls,
        tuple(s.sources),
        copies,
        s.schedule,
        interval,
        tuple(s.checks),
        s.hooks,
        s.hostname or f"{tname}.{sname}",
        s.description,
    )


def _source(lines, environ, at: tuple, src: Source, names: set[str]) -> None:
    err = lines.error
    if src.type not in SOURCE_TYPES:
        raise err((*at, "type"), f"unknown source type {src.type!r} (known: {', '.join(SOURCE_TYPES)})")
    if src.type == "paths":
        if not src.paths or not all(p.startswith("/") for p in src.paths):
            raise err((*at, "paths"), "give absolute paths")
    elif src.type == "postgres":
        if not src.database:
            raise err((*at, "database"), "name the database to dump")
        if not 0 < src.port < 65536:
            raise err((*at, "port"), "is not a port")
        _secret_ref(lines, at, src.password_file, src.password_env, environ, required=False)
    elif src.type == "sqlite":
        if not src.path.startswith("/"):
            raise err((*at, "path"), "give the database file's absolute path")
    elif src.type == "command":
        if not src.command or not all(isinstance(x, str) and x for x in src.command):
            raise err((*at, "command"), "a command is a non-empty list of arguments (no shell)")
    _dur(lines, (*at, "timeout"), src.timeout)
    name = src.name or source_name(src)
    if not _NAME.match(name):
        raise err((*at, "name"), "source names are lower-case letters, digits, - and _")
    if name in names:
        raise err((*at, "name"), f"two sources are named {name!r}: give each a name")
    names.add(name)


def _url_has_password(url: str) -> bool:
    """user:password@ in the authority (however the password is spelled), or a password/secret/token
    parameter in the query string."""
    from urllib.parse import parse_qsl, urlsplit

    text = url.split(":", 1)[1] if url.startswith("s3:") and not url.startswith("s3://") else url
    if "://" in text:  # user:password@host, the password spelled with anything (SQLAlchemy allows '/')
        auth = text.split("://", 1)[1].split("?", 1)[0]
        if "@" in auth and ":" in auth.rsplit("@", 1)[0]:
            return True
    try:
        query = parse_qsl(urlsplit(text).query, keep_blank_values=True)
    except ValueError:
        return "@" in text  # unparsable: refuse anything that could carry a user part
    return any(_SECRET_KEYS.match(k) or k.lower() in ("sslpassword", "passfile") for k, _ in query)


def source_name(src: Source) -> str:
    if src.name:
        return src.name
    if src.type == "sqlite":
        base = os.path.basename(src.path).rsplit(".", 1)[0].lower()
        return re.sub(r"[^a-z0-9_-]", "-", base)[:63] or "sqlite"
    if src.type == "postgres":
        return re.sub(r"[^a-z0-9_-]", "-", src.database.lower())[:63] or "postgres"
    return src.type


def _check(lines, at: tuple, chk: Check, sources) -> None:
    err = lines.error
    if chk.type not in CHECK_TYPES:
        raise err((*at, "type"), f"unknown check type {chk.type!r} (known: {', '.join(CHECK_TYPES)})")
    if chk.type in ("postgres", "sqlite"):
        if not chk.query.strip():
            raise err((*at, "query"), "give a query that must return rows")
        of_type = [source_name(s) for s in sources if s.type == chk.type]
        if chk.source and chk.source not in of_type:
            raise err((*at, "source"), f"no {chk.type} source named {chk.source!r}")
        if not chk.source and len(of_type) != 1:
            raise err(at, f"the system has {len(of_type)} {chk.type} sources: name one with source = ...")
    if chk.type == "command" and (not chk.command or not all(isinstance(x, str) and x for x in chk.command)):
        raise err((*at, "command"), "a command is a non-empty list of arguments (no shell)")
    conn = ("host", "port", "user", "password_file", "password_env", "database")
    if chk.type != "postgres":
        for key in conn:
            if getattr(chk, key):
                raise err((*at, key), "only a postgres check connects to a database server")
    if chk.port and not 0 < chk.port < 65536:
        raise err((*at, "port"), "is not a port")
    _secret_ref(lines, at, chk.password_file, chk.password_env, None, required=False)
    _dur(lines, (*at, "timeout"), chk.timeout)


def _secret_ref(lines, at: tuple, file: str, env: str, environ, required: bool) -> None:
    if file and env:
        raise lines.error((*at, "password_env"), "give password_file or password_env, not both")
    if required and not (file or env):
        raise lines.error(at, "give password_file or password_env")
    if file and not file.startswith("/"):
        raise lines.error((*at, "password_file"), "give an absolute path")


def _dur(lines, at: tuple, text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise lines.error(at, str(e)) from None


def _cron(lines, at: tuple, expr: str) -> None:
    from datetime import UTC, datetime

    from cronsim import CronSim, CronSimError

    try:
        CronSim(expr, datetime.now(UTC))
    except (CronSimError, ValueError) as e:
        raise lines.error(at, f"bad cron expression {expr!r}: {e}") from None


def read_secret(file: str, env: str, environ=None, what: str = "password") -> str:
    """A secret from a file (first line, trailing newline stripped) or an environment variable."""
    environ = os.environ if environ is None else environ
    if env:
        value = environ.get(env)
        if not value:
            raise ConfigError(f"the environment variable {env} (the {what}) is not set")
        return value
    if file:
        try:
            with open(file, encoding="utf-8") as f:
                value = f.read().split("\n", 1)[0].rstrip("\r")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read the {what} from {file}: {getattr(e, 'strerror', None) or e}") from None
        if not value:
            raise ConfigError(f"{file} (the {what}) is empty")
        return value
    raise ConfigError(f"no {what} configured")


# ---- where a key is -----------------------------------------------------------------------------------
class _Lines:
    """Maps key paths to the line that sets them, for error messages (tomllib keeps no positions).

    Table headers ([a.b], [[a.b]] with its running index) and `key = ...` lines are recorded; a path
    inside an inline table or array reports the line of its nearest recorded ancestor."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'. ]+?)\s*=")

    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.where: dict[tuple, int] = {}
        arrays: dict[tuple, int] = {}
        table: tuple = ()
        for no, line in enumerate(text.splitlines(), 1):
            m = self._HEADER.match(line)
            if m:
                keys = tuple(_split_key(m.group(2)))
                if m.group(1) == "[[":
                    i = arrays.get(keys, -1) + 1
                    arrays[keys] = i
                    table = (*self._concrete(keys, arrays), i)
                else:
                    table = self._concrete(keys, arrays)
                self.where.setdefault(table, no)
                continue
            m = self._KEY.match(line)
            if m and not line.lstrip().startswith("#"):
                self.where.setdefault((*table, *_split_key(m.group(1))), no)

    @staticmethod
    def _concrete(keys: tuple, arrays: dict) -> tuple:
        """[[a.b]] then [a.b.c]: c belongs to the last element of a.b (its index follows a.b)."""
        out: list = []
        for n in range(1, len(keys) + 1):
            out.append(keys[n - 1])
            if n < len(keys) and keys[:n] in arrays:
                out.append(arrays[keys[:n]])
        return tuple(out)

    def line_of(self, at: tuple) -> int | None:
        for n in range(len(at), 0, -1):
            no = self.where.get(tuple(at[:n]))
            if no is not None:
                return no
        return None

    def error(self, at: tuple, message: str) -> ConfigError:
        no = self.line_of(at)
        key = ".".join(str(k) if not isinstance(k, int) else f"[{k}]" for k in at).replace(".[", "[")
        return ConfigError(f"{self.path}:{no if no else '?'}: {key}: {message}")

    def error_from_msgspec(self, text: str, base: tuple = ()) -> ConfigError:
        # msgspec: "Object contains unknown field `foo` - at `$.sources[0]`", "Expected `int`, got `str` - at ..."
        m = re.search(r" - at `\$(.*)`$", text)
        at: list = list(base)
        if m:
            for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", m.group(1)):
                at.append(name or int(index))
            text = text[: m.start()]
        unknown = re.match(r"Object contains unknown field `(.+)`", text)
        if unknown:
            at.append(unknown.group(1))
            text = "unknown key"
        missing = re.match(r"Object missing required field `(.+)`", text)
        if missing:
            text = f"missing required key {missing.group(1)!r}"
        return self.error(tuple(at), text[:1].lower() + text[1:])


def _split_key(text: str) -> list[str]:
    out, cur, quote = [], "", ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
            else:
                cur += ch
        elif ch in "\"'":
            quote = ch
        elif ch == ".":
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out
