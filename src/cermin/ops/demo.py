"""The demo fleet behind `cermin demo` (the README's first command; docs/dashboard.md "Demo").

`build_demo(root)` makes, under one directory, a small data center on the embedded policy classes
(strategis, tinggi, rendah): four tenants, seven systems with generated data (a SQLite application with a
real table, a file share of office-like documents, web application directories), one local repository per
tenant, the tenants' immutable tier (local directories here; S3 Object Lock in production), one tenant's own
mirror under its own password, a configuration checked by `load_config`, and a SQLite state store. Then it
runs the real agent in-process: a backup of every system (mirrored to its other copies), maintenance (prune,
read-data verify), exactly one restore drill, and a simulated ransomware attack on one file share (files
encrypted in place with AES-CTR, some renamed, ransom notes) whose next backup the guard flags.

The fleet is built to show, on purpose, systems that are not covered and why:

| system | class | what is wrong |
|---|---|---|
| imigrasi/paspor | strategis | nothing: backed up, on the immutable tier and the tenant's mirror, verified, drilled |
| dukcapil/berkas | tinggi | the attack: an open guard alarm (the newest snapshot is infected) |
| dukcapil/antrian | rendah | its database moved (the configured file is missing): the backup fails, no backup |
| bapenda/kasir | tinggi | its immutable tier is an off-site mount that is down: no immutable copy |
| the others | | never drilled (one drill was run, as on a fleet's first day) |

A class that requires a copy the system lacks is refused by the configuration loader, so the missing
immutable copy is one configured but unreachable. Everything happens at the real time (snapshots carry it):
the first round's runs are recorded a few minutes before it so the attacked share's next backup falls in a
new schedule slot. Building takes a few seconds and a few MB.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import sqlite3
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cermin import __version__
from cermin.errors import EXIT_USAGE, CerminError

MARKER = "cermin-demo.json"
_FORMAT = 1

COVERED = "imigrasi/paspor"  # the one system drilled
ATTACKED = "dukcapil/berkas"
NO_SOURCE = "dukcapil/antrian"
NO_IMMUTABLE = "bapenda/kasir"

TENANTS = {
    "imigrasi": "Direktorat Jenderal Imigrasi",
    "dukcapil": "Dinas Kependudukan dan Pencatatan Sipil",
    "bapenda": "Badan Pendapatan Daerah",
    "arsip": "Arsip Daerah",
}
NOTE = "README_DECRYPT.txt"


class DemoError(CerminError):
    exit_code = EXIT_USAGE


@dataclass
class DemoFleet:
    root: str
    config_path: str
    state_url: str
    built: bool  # False: an earlier demo found in root and reused
    built_at: str  # RFC 3339, UTC
    now: datetime
    status: list = field(default_factory=list)  # SystemStatus, as the state store answers at `now`

    @property
    def covered(self) -> list:
        return [s for s in self.status if s.meets_class]

    @property
    def uncovered(self) -> list:
        return [s for s in self.status if not s.meets_class]

    @property
    def exit_code(self) -> int:
        return 0

    def to_json(self) -> list[dict]:
        return [
            {
                "message_type": "demo_fleet",
                "root": self.root,
                "config": self.config_path,
                "state_url": self.state_url,
                "built": self.built,
                "built_at": self.built_at,
                "systems": len(self.status),
                "meeting": len(self.covered),
                "covered": [s.id for s in self.covered],
                "not_covered": {s.id: s.reasons for s in self.uncovered},
            }
        ]

    def to_text(self, verbose: int = 0) -> list:
        from cermin.engine.results import answer

        return [answer(line) for line in self.summary()]

    def summary(self) -> list[str]:
        """Which systems are covered now and which are not, and why (the state store's answer)."""
        from cermin.ops.config import fmt_duration

        n, ok = len(self.status), len(self.covered)
        tenants = len({s.system.tenant for s in self.status})
        head = "Demo fleet built" if self.built else f"Demo fleet (built {self.built_at}, reused)"
        lines = [
            f"{head} in {self.root}: {tenants} tenants, {n} systems",
            f"  configuration {self.config_path}",
            f"  state store   {self.state_url}",
            "",
            f"{ok} of {n} systems meet their class now; {n - ok} do not.",
        ]
        width = max((len(s.id) for s in self.status), default=0)
        pad = " " * (width + 15)
        if self.covered:
            lines.append("Covered:")
        for s in sorted(self.covered, key=lambda s: (s.system.priority, s.id)):
            d = s.last_drill
            age = "never" if s.backup_age_s is None else fmt_duration(s.backup_age_s) + " ago"
            drill = f"drill {d.verdict}, RTO {d.rto_measured_s:.1f}s of {fmt_duration(d.rto_target_s)}" if d else ""
            copies = ", ".join(k for k, c in s.copies.items() if c.newest is not None)
            lines.append(f"  {s.id:<{width}}  {s.system.policy:<10} backup {age}; copies {copies}; {drill}")
        if self.uncovered:
            lines.append("Not covered, and why:")
        for s in sorted(self.uncovered, key=lambda s: (not s.open_alarms, -len(s.reasons), s.system.priority, s.id)):
            lines.append(f"  {s.id:<{width}}  {s.system.policy:<10} " + "; ".join(s.reasons))
            failed: dict[str, list[str]] = {}  # error -> the runs that failed with it
            for (kind, copy), run in s.last_runs.items():
                if run.status == "failed" and run.error:
                    failed.setdefault(run.error.splitlines()[0], []).append(f"{kind} {copy}" if copy else kind)
            for error, runs in failed.items():
                lines.append(f"{pad}{', '.join(runs)} failed: {error}")
        if not self.built:
            lines += ["", "The demo runs no agent, so its backups age; `cermin demo --reset` rebuilds it."]
        return lines


def _utc(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ---- building --------------------------------------------------------------------------------------
def build_demo(
    root: str,
    progress: Callable[[str], None] | None = print,
    *,
    reset: bool = False,
    kdf=None,
) -> DemoFleet:
    """Build the demo fleet in `root` (made if absent) -> DemoFleet. An earlier demo there is reused
    (rebuilt with reset=True); any other non-empty directory is refused. `kdf`: the repositories' Argon2id
    parameters (default: cermin's own)."""
    say = progress or (lambda _msg: None)
    root = os.path.abspath(root)
    marker = _read_marker(root)
    if os.path.isdir(root) and os.listdir(root):
        if marker is None:
            raise DemoError(
                f"{root} is not empty and holds no cermin demo ({MARKER} is missing): "
                "give an empty or new directory (the demo removes nothing in a directory it did not make)"
            )
        if marker.get("state") == "ready" and not reset:
            return open_demo(root)
        say(f"removing the earlier demo in {root}")
        _remove_demo(root)
    os.makedirs(root, exist_ok=True)
    started = datetime.now(UTC)
    _write_marker(root, {"state": "building", "started": _utc(started)})
    paths = _Paths(root)
    rng = random.Random(19)

    say("generating the tenants' data")
    counts = _make_sources(paths, rng)
    say("creating repositories and password files")
    _make_repositories(paths, kdf)
    cfg_path = os.path.join(root, "cermin.toml")
    # the share is backed up every 5 minutes, on the minutes that put a slot at the start of this minute
    every5 = f"{datetime.now(UTC).minute % 5}-59/5 * * * *"
    with open(cfg_path, "w", encoding="utf-8") as f:
        f.write(_config_text(paths, counts, every5))

    from cermin.ops.agent import Agent
    from cermin.ops.agentview import state_url
    from cermin.ops.config import load_config
    from cermin.ops.schedule import BACKUP, DRILL, MAINTAIN, latest_slot
    from cermin.ops.state import StateStore

    cfg = load_config(cfg_path)
    url = state_url(cfg)
    clock = _Clock()
    # The first round is recorded just before the attacked share's current backup slot (at most about a
    # minute back), so its backup after the attack serves a new slot at the real time, as the agent runs it.
    now = datetime.now(UTC)
    slot = latest_slot(cfg.system(ATTACKED), BACKUP, now)
    clock.shift = (now - slot) + timedelta(seconds=5)
    store = StateStore.open(url)
    try:
        agent = Agent(cfg, store, clock=clock, sleep=lambda _s: None)
        agent.start()
        say(f"backing up {len(cfg.systems)} systems (and mirroring them to their other copies)")
        _report(say, agent.tick(kinds=(BACKUP,)))
        say("maintenance: prune and read-data verify of every copy")
        _report(say, agent.tick(kinds=(MAINTAIN,)))
        say(f"restore drill of {COVERED}")
        _report(say, agent.tick(kinds=(DRILL,), systems=(COVERED,)))
        say(f"ransomware attack on the file share of {ATTACKED}")
        hit = attack(paths.data(ATTACKED, "share"), random.Random())
        say(f"  {hit['files']} files encrypted, {hit['renamed']} renamed to *.lockbit, {hit['notes']} ransom notes")
        clock.shift = timedelta(0)
        say(f"the next backup of {ATTACKED}")
        _report(say, agent.tick(kinds=(BACKUP,), systems=(ATTACKED,)))
        _check_caught(store)
        now = datetime.now(UTC)
        status = store.status(now)
    finally:
        store.close()
    _write_marker(
        root,
        {
            "state": "ready",
            "built": _utc(now),
            "cermin": __version__,
            "config": cfg_path,
            "attacked": ATTACKED,
            "drilled": COVERED,
        },
    )
    return DemoFleet(root, cfg_path, url, True, _utc(now), now, status)


def open_demo(root: str, now: datetime | None = None) -> DemoFleet:
    """The demo built earlier in `root`, its status read from its state store at `now`."""
    from cermin.ops.agentview import state_url
    from cermin.ops.config import load_config
    from cermin.ops.state import StateStore

    root = os.path.abspath(root)
    marker = _read_marker(root)
    if marker is None or marker.get("state") != "ready":
        raise DemoError(f"{root} holds no finished cermin demo: build one with `cermin demo {root}`")
    cfg_path = os.path.join(root, "cermin.toml")
    cfg = load_config(cfg_path)
    url = state_url(cfg)
    now = now or datetime.now(UTC)
    store = StateStore.open(url)
    try:
        status = store.status(now)
    finally:
        store.close()
    return DemoFleet(root, cfg_path, url, False, str(marker.get("built", "?")), now, status)


class _Clock:
    """The real time, minus `shift` (the demo's first round runs a few minutes in the past)."""

    def __init__(self) -> None:
        self.shift = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) - self.shift


def _report(say, outcomes) -> None:
    for o in outcomes:
        if o.status in ("failed", "warning"):
            planned = "as planned" if o.system in (NO_SOURCE, NO_IMMUTABLE) else "UNEXPECTED"
            say(f"  {o.system} {o.kind}: {o.status} ({planned}) — {o.message}")


def _check_caught(store) -> None:
    snaps = store.snapshots(ATTACKED, copy="primary", limit=1)
    alarms = store.alarms(open_only=True, system_id=ATTACKED)
    if not snaps or snaps[0].verdict != "infected" or not alarms:
        verdict = snaps[0].verdict if snaps else None
        raise DemoError(f"the guard did not catch the simulated attack on {ATTACKED} (verdict {verdict})")


def _read_marker(root: str) -> dict | None:
    try:
        with open(os.path.join(root, MARKER), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == _FORMAT else None


def _write_marker(root: str, fields: dict) -> None:
    tmp = os.path.join(root, MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"format": _FORMAT, "what": "cermin demo fleet (cermin demo)", **fields}, f, indent=2)
        f.write("\n")
    os.replace(tmp, os.path.join(root, MARKER))


def _remove_demo(root: str) -> None:
    """Everything in root (only called when root holds the demo's marker)."""
    for name in os.listdir(root):
        p = os.path.join(root, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


# ---- layout ----------------------------------------------------------------------------------------
class _Paths:
    def __init__(self, root: str) -> None:
        self.root = root
        self.repos = os.path.join(root, "repos")
        self.secrets = os.path.join(root, "secrets")
        self.agent = os.path.join(root, "agent")
        # bapenda's immutable tier: an off-site mount that is not mounted (the directory does not exist)
        self.offsite = os.path.join(root, "offsite")

    def data(self, system: str, *parts: str) -> str:
        return os.path.join(self.root, "data", *system.split("/"), *parts)

    def repo(self, name: str) -> str:
        return os.path.join(self.offsite if name == "bapenda-vault" else self.repos, name)

    def password(self, name: str) -> str:
        return os.path.join(self.secrets, f"{name}.password")


# name -> kind; every tenant has its primary, the tenants with tinggi/strategis systems an immutable tier
REPOSITORIES = {
    "imigrasi": "primary",
    "imigrasi-vault": "immutable",
    "imigrasi-own": "mirror",  # the tenant's own mirror, under its own password
    "dukcapil": "primary",
    "dukcapil-vault": "immutable",
    "bapenda": "primary",
    "bapenda-vault": "immutable",  # offsite/, which is missing: the mount is down
    "arsip": "primary",
}


def _make_repositories(paths: _Paths, kdf) -> None:
    from cermin.backend.local import LocalBackend
    from cermin.repo.repository import Repository

    os.makedirs(paths.secrets, mode=0o700, exist_ok=True)
    os.makedirs(paths.repos, exist_ok=True)
    for name in REPOSITORIES:
        password = secrets.token_urlsafe(24)
        fd = os.open(paths.password(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        if name != "bapenda-vault":
            Repository.init(LocalBackend(paths.repo(name)), password.encode(), kdf=kdf)


def _config_text(paths: _Paths, counts: dict[str, int], every5: str) -> str:
    q = json.dumps  # a JSON string is a TOML basic string
    state = "sqlite:///" + os.path.join(paths.root, "state.db")
    out = [
        "# The cermin demo fleet, made by `cermin demo` on the embedded classes strategis, tinggi and rendah.",
        "# Every repository is a local directory below this one. In production the immutable copies live on",
        "# S3 Object Lock (docs/immutable.md) and a tenant's mirror at the tenant's own site (docs/mirror.md).",
        "",
        "[agent]",
        f"workdir = {q(paths.agent)}",
        f"state = {q(state)}",
        'name = "demo-agent"',
        "parallel = 1  # systems sharing a repository would otherwise meet each other's prune lock",
        "",
    ]
    for name, kind in REPOSITORIES.items():
        if name == "bapenda-vault":
            out.append("# bapenda's immutable tier: an off-site mount that is down in the demo")
        out += [
            f"[repositories.{name}]",
            f"url = {q(paths.repo(name))}",
            f"password_file = {q(paths.password(name))}",
            f'kind = "{kind}"',
            "",
        ]

    def system(tid, sid, cls, desc, copies, sources, checks=(), schedule=""):
        at = f"tenants.{tid}.systems.{sid}"
        out.extend([f"[{at}]", f'class = "{cls}"', f"description = {q(desc)}"])
        out.extend(f'{k} = "{v}"' for k, v in copies.items())
        if schedule:
            out.append(f'schedule = "{schedule}"')
        out.append("")
        for src in sources:
            out.append(f"[[{at}.sources]]")
            out.extend(f"{k} = {q(v)}" for k, v in src.items())
            out.append("")
        for chk in checks:
            out.append(f"[[{at}.checks]]")
            out.extend(f"{k} = {v if isinstance(v, int) else q(v)}" for k, v in chk.items())
            out.append("")

    def tenant(tid):
        out.extend([f"[tenants.{tid}]", f"name = {q(TENANTS[tid])}", ""])

    def d(s, *p):
        return paths.data(s, *p)

    tenant("imigrasi")
    system(
        "imigrasi",
        "paspor",
        "strategis",
        "passport applications: the application's SQLite database and the scanned forms",
        {"primary": "imigrasi", "immutable": "imigrasi-vault", "mirror": "imigrasi-own"},
        [
            {"type": "sqlite", "path": d(COVERED, "permohonan.db")},
            {"type": "paths", "name": "berkas", "paths": [d(COVERED, "berkas")]},
        ],
        [
            {"type": "sqlite", "name": "issued passports", "query": "SELECT 1 FROM permohonan WHERE status = 'terbit'"},
            {"type": "files", "name": "scanned forms", "source": "berkas", "min_files": counts[COVERED]},
        ],
    )
    system(
        "imigrasi",
        "portal",
        "tinggi",
        "the public web portal (static site, templates, configuration)",
        {"primary": "imigrasi", "immutable": "imigrasi-vault"},
        [{"type": "paths", "paths": [d("imigrasi/portal", "www")]}],
        [{"type": "files", "min_files": counts["imigrasi/portal"]}],
    )
    tenant("dukcapil")
    system(
        "dukcapil",
        "berkas",
        "tinggi",
        "the office file share: letters, reports, minutes, registry extracts (backed up every 5 minutes)",
        {"primary": "dukcapil", "immutable": "dukcapil-vault"},
        [{"type": "paths", "name": "share", "paths": [d(ATTACKED, "share")]}],
        [{"type": "files", "min_files": counts[ATTACKED]}],
        schedule=every5,
    )
    system(
        "dukcapil",
        "antrian",
        "rendah",
        "the queue system; its upgrade moved the database to antrian-v2.db and nobody told the backup",
        {"primary": "dukcapil"},
        [{"type": "sqlite", "path": d(NO_SOURCE, "antrian.db")}],
        [{"type": "sqlite", "query": "SELECT 1 FROM tiket"}],
    )
    tenant("bapenda")
    system(
        "bapenda",
        "kasir",
        "tinggi",
        "tax payments: the cashier application's SQLite database",
        {"primary": "bapenda", "immutable": "bapenda-vault"},
        [{"type": "sqlite", "path": d(NO_IMMUTABLE, "kasir.db")}],
        [{"type": "sqlite", "query": "SELECT 1 FROM transaksi WHERE jumlah > 0"}],
    )
    system(
        "bapenda",
        "intranet",
        "rendah",
        "the staff intranet (wiki pages and attachments)",
        {"primary": "bapenda"},
        [{"type": "paths", "paths": [d("bapenda/intranet", "wiki")]}],
    )
    tenant("arsip")
    system(
        "arsip",
        "katalog",
        "rendah",
        "the archive's catalogue exports and finding aids",
        {"primary": "arsip"},
        [{"type": "paths", "paths": [d("arsip/katalog", "katalog")]}],
    )
    return "\n".join(out)


# ---- generated data --------------------------------------------------------------------------------
_WORDS = (
    "surat permohonan data penduduk laporan bulanan kantor pelayanan nomor tanggal kepala dinas bidang "
    "pencatatan sipil kependudukan rapat notulen hasil keputusan anggaran tahun daerah provinsi kabupaten kota "
    "kecamatan kelurahan warga pemohon berkas lampiran tembusan perihal hormat kami dengan ini menyampaikan "
    "bahwa untuk dalam rangka pelaksanaan kegiatan program evaluasi target realisasi persen jumlah total "
    "layanan publik antrian loket petugas verifikasi dokumen identitas akta kelahiran kartu keluarga paspor "
    "visa izin tinggal pajak retribusi kendaraan bumi bangunan wajib setoran kas penerimaan pendapatan "
    "arsip katalog inventaris naskah koleksi digitalisasi sistem aplikasi jaringan server cadangan pemulihan"
).split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 16))]
    return " ".join(words).capitalize() + "."


def _text(rng: random.Random, size: int) -> str:
    parts: list[str] = []
    n = 0
    while n < size:
        p = " ".join(_sentence(rng) for _ in range(rng.randint(3, 7)))
        parts.append(p)
        n += len(p) + 2
    return "\n\n".join(parts) + "\n"


def _write(path: str, data: str | bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def _docx(path: str, rng: random.Random, size: int) -> None:
    body = "".join(f"<w:p><w:r><w:t>{p}</w:t></w:r></w:p>" for p in _text(rng, size).split("\n\n"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
            'content-types"><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
            'officedocument.wordprocessingml.document.main+xml"/></Types>',
        )
        z.writestr(
            "word/document.xml",
            '<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="http://schemas.openxmlformats.org/'
            f'wordprocessingml/2006/main"><w:body>{body}</w:body></w:document>',
        )


def _xlsx(path: str, rng: random.Random, rows: int) -> None:
    cells = "".join(
        f'<row r="{i}"><c r="A{i}" t="inlineStr"><is><t>{rng.choice(_WORDS)}</t></is></c>'
        f'<c r="B{i}"><v>{rng.randint(1, 10_000)}</v></c><c r="C{i}"><v>{rng.random() * 100:.2f}</v></c></row>'
        for i in range(1, rows + 1)
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0" encoding="UTF-8"?><Types/>')
        z.writestr(
            "xl/worksheets/sheet1.xml",
            '<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/'
            f'spreadsheetml/2006/main"><sheetData>{cells}</sheetData></worksheet>',
        )


def _pdf(path: str, rng: random.Random, size: int) -> None:
    lines = _text(rng, size).replace("(", "").replace(")", "").splitlines()
    stream = "BT /F1 10 Tf 40 800 Td " + " ".join(f"({ln}) Tj 0 -12 Td" for ln in lines if ln) + " ET"
    doc = (
        "%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
        "2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n"
        "3 0 obj << /Type /Page /Parent 2 0 R /Contents 4 0 R >> endobj\n"
        f"4 0 obj << /Length {len(stream)} >> stream\n{stream}\nendstream endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    )
    _write(path, doc)


def _csv(path: str, rng: random.Random, rows: int) -> None:
    lines = ["nomor;nama;kecamatan;jumlah;tanggal"]
    for i in range(rows):
        day = datetime(2024, 1, 1) + timedelta(days=rng.randint(0, 700))
        name = f"{rng.choice(_WORDS)} {rng.choice(_WORDS)}".title()
        lines.append(f"{i + 1};{name};{rng.choice(_WORDS)};{rng.randint(1, 5000)};{day:%Y-%m-%d}")
    _write(path, "\n".join(lines) + "\n")


def _share(root: str, rng: random.Random) -> int:
    """The office file share: five folders of letters, reports, minutes and registry extracts."""
    n = 0
    folders = ("surat-masuk", "surat-keluar", "laporan-bulanan", "notulen-rapat", "data-kependudukan")
    for folder in folders:
        for i in range(10):
            kind = ("txt", "docx", "xlsx", "pdf", "csv")[(i + len(folder)) % 5]
            p = os.path.join(root, folder, f"{folder}-{2025}-{i + 1:03d}.{kind}")
            size = rng.randint(6_000, 30_000)
            if kind == "txt":
                _write(p, _text(rng, size))
            elif kind == "docx":
                _docx(p, rng, size * 2)
            elif kind == "xlsx":
                _xlsx(p, rng, size // 60)
            elif kind == "pdf":
                _pdf(p, rng, size)
            else:
                _csv(p, rng, size // 40)
            n += 1
    return n


def _website(root: str, rng: random.Random, pages: int) -> int:
    files = {
        "index.html": f"<!doctype html><html><head><title>Portal</title><link rel=stylesheet href=static/site.css>"
        f"</head><body><h1>Layanan</h1><p>{_text(rng, 3000)}</p></body></html>\n",
        "static/site.css": "body { font-family: sans-serif; margin: 2em }\n" * 40,
        "static/app.js": "document.addEventListener('DOMContentLoaded', () => { /* menu */ });\n" * 30,
        "config/app.ini": "[app]\nenv = production\ndb = /srv/app/app.db\nsession_ttl = 3600\n",
    }
    for i in range(pages):
        files[f"layanan/halaman-{i + 1:02d}.html"] = (
            f"<!doctype html><html><body><h1>{rng.choice(_WORDS).title()}</h1><p>{_text(rng, 4000)}</p></body></html>\n"
        )
    for rel, text in files.items():
        _write(os.path.join(root, rel), text)
    return len(files)


def _make_sources(paths: _Paths, rng: random.Random) -> dict[str, int]:
    """Every system's data; -> the number of files of each system whose drill counts them."""
    counts: dict[str, int] = {}
    # imigrasi/paspor: the applications database and the scanned forms
    os.makedirs(paths.data(COVERED), exist_ok=True)
    db = sqlite3.connect(paths.data(COVERED, "permohonan.db"))
    db.execute(
        "CREATE TABLE permohonan (id INTEGER PRIMARY KEY, nomor TEXT UNIQUE, nama TEXT, jenis TEXT, "
        "status TEXT, diajukan TEXT, kantor TEXT)"
    )
    status = ("diajukan", "diverifikasi", "terbit", "terbit", "terbit", "ditolak")
    db.executemany(
        "INSERT INTO permohonan (nomor, nama, jenis, status, diajukan, kantor) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (
                f"P{100000 + i}",
                f"{rng.choice(_WORDS)} {rng.choice(_WORDS)}".title(),
                rng.choice(("baru", "penggantian", "hilang")),
                rng.choice(status),
                f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                rng.choice(("Jakarta", "Surabaya", "Medan", "Makassar", "Denpasar")),
            )
            for i in range(3000)
        ],
    )
    db.commit()
    db.close()
    for i in range(20):
        _pdf(paths.data(COVERED, "berkas", f"formulir-P{100000 + i}.pdf"), rng, rng.randint(3_000, 9_000))
    counts[COVERED] = 20
    counts["imigrasi/portal"] = _website(paths.data("imigrasi/portal", "www"), rng, 16)
    counts[ATTACKED] = _share(paths.data(ATTACKED, "share"), rng)
    # dukcapil/antrian: the database is antrian-v2.db now; the configuration still names antrian.db
    os.makedirs(paths.data(NO_SOURCE), exist_ok=True)
    db = sqlite3.connect(paths.data(NO_SOURCE, "antrian-v2.db"))
    db.execute("CREATE TABLE tiket (id INTEGER PRIMARY KEY, loket INTEGER, dipanggil TEXT)")
    db.executemany("INSERT INTO tiket (loket, dipanggil) VALUES (?, ?)", [(i % 6, None) for i in range(500)])
    db.commit()
    db.close()
    # bapenda/kasir: tax payments
    os.makedirs(paths.data(NO_IMMUTABLE), exist_ok=True)
    db = sqlite3.connect(paths.data(NO_IMMUTABLE, "kasir.db"))
    db.execute("CREATE TABLE transaksi (id INTEGER PRIMARY KEY, waktu TEXT, npwpd TEXT, jenis TEXT, jumlah INTEGER)")
    db.executemany(
        "INSERT INTO transaksi (waktu, npwpd, jenis, jumlah) VALUES (?, ?, ?, ?)",
        [
            (
                f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.randint(8, 16):02d}:00",
                f"P{rng.randint(1000000, 9999999)}",
                rng.choice(("PBB", "BPHTB", "PKB", "hotel", "restoran", "reklame")),
                rng.randint(10, 5000) * 1000,
            )
            for _ in range(4000)
        ],
    )
    db.commit()
    db.close()
    wiki = paths.data("bapenda/intranet", "wiki")
    for i in range(15):
        _write(os.path.join(wiki, f"halaman-{i + 1:02d}.md"), f"# {rng.choice(_WORDS).title()}\n\n{_text(rng, 5000)}")
    for i in range(4):
        _docx(os.path.join(wiki, "lampiran", f"lampiran-{i + 1}.docx"), rng, 12_000)
    katalog = paths.data("arsip/katalog", "katalog")
    for i in range(12):
        _csv(os.path.join(katalog, f"inventaris-{1990 + i * 3}.csv"), rng, 300)
        _write(os.path.join(katalog, "uraian", f"uraian-{1990 + i * 3}.txt"), _text(rng, 6000))
    return counts


# ---- the attack ------------------------------------------------------------------------------------
def attack(tree: str, rng: random.Random, share: float = 0.85) -> dict:
    """A simulated ransomware attack on `tree`: `share` of its files encrypted in place (AES-256-CTR, a random
    key thrown away), a third of those renamed to *.lockbit, a ransom note in every directory touched."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    files = sorted(os.path.join(d, f) for d, _, names in os.walk(tree) for f in names)
    victims = sorted(rng.sample(files, max(1, round(len(files) * share))))
    key = os.urandom(32)
    dirs, renamed = set(), 0
    for i, p in enumerate(victims):
        enc = Cipher(algorithms.AES(key), modes.CTR(os.urandom(16))).encryptor()
        with open(p, "r+b") as f:
            data = f.read()
            f.seek(0)
            f.write(enc.update(data) + enc.finalize())
        if i % 3 == 0:
            os.rename(p, p + ".lockbit")
            renamed += 1
        dirs.add(os.path.dirname(p))
    for d in sorted(dirs):
        _write(
            os.path.join(d, NOTE),
            "Your files are encrypted. To get them back, write to the address below within 72 hours.\n",
        )
    return {"files": len(victims), "renamed": renamed, "notes": len(dirs)}
