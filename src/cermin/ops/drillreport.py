"""Drill reports: the record, its Ed25519 signature, the `drill_report` aux record, JSON and HTML files.

A report is signed as one value: the signature covers `SIGN_DOMAIN` followed by the report's
*canonical bytes* — its JSON with keys sorted, no whitespace, UTF-8, non-ASCII kept (Python:
`json.dumps(report, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()`). The
signed envelope carries the report, the signature, the public key and its fingerprint:

    {"format": "cermin-drill-report", "report": {...}, "signature": b64, "public_key": b64,
     "key_fingerprint": "sha256:<hex of SHA-256(raw public key)>"}

It is the JSON file's content and the `data` of the `drill_report` aux record (FORMAT.md §10a).
Verification recomputes the canonical bytes from the report exactly as stored — an added, removed or
changed field anywhere in it changes them — checks the fingerprint names the key given, and, when
the verifier has trusted keys, that the key is one of them. Anyone can make a key and sign an edited
report with it: only a trusted key proves who signed, so `cermin drill verify` exits 0 only for a
report signed by one (`--key`, or the agent's key from the configuration). Everything read back is
hostile: types are checked before anything is used.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import tempfile
from dataclasses import dataclass

import msgspec

from cermin.engine.results import Line, answer, fail, note
from cermin.errors import EXIT_FATAL, CerminError
from cermin.ops.agentkey import AgentKey, fingerprint

DRILL_REPORT = "drill_report"  # aux record type
REPORT_FORMAT = "cermin-drill-report"
REPORT_VERSION = 1
SIGN_DOMAIN = b"cermin drill report v1\n"
MAX_REPORT_BYTES = 4 * 1024 * 1024  # a report file or aux record larger than this is not read
MAX_TEXT = 1000  # characters kept of one error or check detail
MAX_ERRORS = 50


class RestoredSnapshot(msgspec.Struct, kw_only=True):
    source: str
    type: str  # the source's type: paths, postgres, sqlite, command
    id: str
    time: str
    files: int
    bytes: int
    verified_files: int
    errors: int  # entries that could not be restored or verified
    guard_verdict: str  # clean, suspicious, infected, unknown (guard/verdict.py)
    seconds: float


class CheckResult(msgspec.Struct, kw_only=True):
    name: str
    type: str  # postgres, sqlite, command, files
    source: str  # the source whose restored data it read ("" = the whole sandbox)
    ok: bool
    skipped: bool  # not run: its source was not part of this drill
    detail: str
    seconds: float


class DrillReport(msgspec.Struct, kw_only=True):
    version: int = REPORT_VERSION
    id: str  # random, names this report
    system: str  # tenant/system
    tenant: str
    policy: str = msgspec.field(name="class")
    copy: str  # primary, immutable, mirror
    repository: str  # its name in the configuration
    repository_id: str  # its config id ("" when it could not be opened)
    location: str
    selection: str  # latest, last-clean, or the snapshot id asked for
    snapshots: list[RestoredSnapshot]
    checks: list[CheckResult]
    rto_measured_s: float
    rto_target_s: int
    met: bool
    verdict: str  # pass | fail
    errors: list[str]
    started: str  # RFC 3339, UTC
    finished: str
    agent: str
    host: str
    cermin_version: str


class SignedReport(msgspec.Struct, kw_only=True):
    format: str = REPORT_FORMAT
    report: DrillReport
    signature: str
    public_key: str
    key_fingerprint: str


def clean_text(s: str, limit: int = MAX_TEXT) -> str:
    """One line of valid UTF-8 (undecodable file names carry surrogates), at most `limit` characters."""
    s = s.encode("utf-8", "backslashreplace").decode("utf-8").replace("\n", " ").replace("\r", " ")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def canonical(report: dict) -> bytes:
    return json.dumps(report, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def signed_bytes(report: dict) -> bytes:
    return SIGN_DOMAIN + canonical(report)


def sign(report: DrillReport, key: AgentKey) -> tuple[SignedReport, str]:
    """(the signed envelope, the SHA-256 hex digest of the signed bytes)."""
    data = signed_bytes(msgspec.to_builtins(report))
    sig = key.sign(data)
    env = SignedReport(
        report=report,
        signature=base64.b64encode(sig).decode(),
        public_key=key.public_b64,
        key_fingerprint=key.fingerprint,
    )
    return env, hashlib.sha256(data).hexdigest()


def envelope_json(env: SignedReport) -> dict:
    return msgspec.to_builtins(env)


# ---- verification -------------------------------------------------------------------------------
@dataclass
class Verification:
    """`ok`: intact and signed by the key it names — and, when the verifier named trusted keys, by one of
    them. `trusted`: by a key the verifier named. Only a trusted signature proves who signed: the command
    line's exit code is 0 for `ok and trusted` alone."""

    ok: bool
    why: str  # what failed, or what was proven
    key_fingerprint: str = ""
    trusted: bool = False  # the key is one the verifier named
    report: DrillReport | None = None
    source: str = ""  # the file or aux record verified
    intact: bool = False  # the signature is valid for the report as stored (whoever's key it is)
    hint: str = ""  # the command line: where trusted keys come from, when none was found or none matched

    def __iter__(self):  # ok, why = verify_report(...)
        return iter((self.ok, self.why))

    @property
    def exit_code(self) -> int:
        return 0 if self.ok and self.trusted else EXIT_FATAL

    def to_json(self) -> list[dict]:
        ok, why = self.ok and self.trusted, self.why  # `ok` as the exit code says
        if self.intact and not self.trusted:
            hint = f": {self.hint}" if self.hint else ""
            why = f"signature valid but by an untrusted key {self.key_fingerprint}{hint}"
        d = {"message_type": "drill_verify", "source": self.source, "ok": ok, "why": why}
        d |= {"key_fingerprint": self.key_fingerprint, "trusted": self.trusted, "intact": self.intact}
        if self.report is not None:
            r = self.report
            d |= {"report_id": r.id, "system": r.system, "verdict": r.verdict, "finished": r.finished}
        return [d]

    def to_text(self, verbose: int = 0) -> list[Line]:
        if not self.intact:
            return [fail(f"{self.source}: NOT VALID: {self.why}")]
        if not self.trusted:
            return [fail(f"{self.source}: {self.to_json()[0]['why']}")]
        r = self.report
        lines = [answer(f"{self.source}: valid signature by {self.key_fingerprint}")]
        if r is not None:
            lines.append(
                answer(f"  drill of {r.system} from {r.copy} at {r.finished}: {r.verdict}, RTO {r.rto_measured_s:.1f}s")
            )
        return lines


def verify_report(obj, trusted_public_keys=(), source: str = "") -> Verification:
    """Check a signed report: `obj` is its JSON (bytes or str), the envelope as a dict, or an AuxRecord;
    `trusted_public_keys` raw 32-byte keys (empty: only that the report is intact and signed by the
    key it names)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from cermin.format.records import AuxRecord

    def bad(why: str) -> Verification:
        return Verification(False, why, source=source)

    if isinstance(obj, AuxRecord):
        if obj.type != DRILL_REPORT:
            return bad(f"an aux record of type {obj.type!r}, not {DRILL_REPORT}")
        obj = obj.data
    if isinstance(obj, (bytes, str)):
        if len(obj) > MAX_REPORT_BYTES:
            return bad("too large for a drill report")
        try:
            obj = json.loads(obj)
        except (ValueError, RecursionError) as e:
            return bad(f"not JSON: {e}")
    if not isinstance(obj, dict) or obj.get("format") != REPORT_FORMAT:
        return bad("not a cermin drill report")
    report, sig, pub, fp = (obj.get(k) for k in ("report", "signature", "public_key", "key_fingerprint"))
    if not isinstance(report, dict) or not all(isinstance(x, str) for x in (sig, pub, fp)):
        return bad("the report, signature, public_key or key_fingerprint is missing")
    try:
        sig_raw = base64.b64decode(sig, validate=True)
        pub_raw = base64.b64decode(pub, validate=True)
    except ValueError:
        return bad("the signature or public key is not base64")
    if len(sig_raw) != 64 or len(pub_raw) != 32:
        return bad("the signature or public key has the wrong length for Ed25519")
    if fingerprint(pub_raw) != fp:
        return bad(f"the public key is not the one it claims ({fp[:23]}…)")
    trusted = [bytes(k) for k in trusted_public_keys]
    try:
        data = signed_bytes(report)
    except (TypeError, ValueError, RecursionError):
        return bad("the report holds values that have no canonical form")
    try:
        Ed25519PublicKey.from_public_bytes(pub_raw).verify(sig_raw, data)
    except InvalidSignature:
        return Verification(
            False, "the signature does not match: the report was changed after signing", fp, source=source
        )
    try:
        parsed = msgspec.convert(report, DrillReport)
    except msgspec.ValidationError as e:
        return Verification(False, f"signed, but not a drill report this cermin reads: {e}", fp, source=source)
    if trusted and pub_raw not in trusted:
        why = f"signature valid but by an untrusted key {fp}: not one of the {len(trusted)} trusted"
        return Verification(False, why, fp, False, parsed, source, intact=True)
    return Verification(True, "intact and signed", fp, bool(trusted), parsed, source, intact=True)


# ---- the aux record -----------------------------------------------------------------------------
def store_report(repo, env: SignedReport, time: str) -> str:
    """Append the signed report to the repository as a `drill_report` aux record; its name."""
    from cermin.backend.base import Kind
    from cermin.format import records
    from cermin.format.records import AuxRecord

    rec = AuxRecord(type=DRILL_REPORT, time=time, target=env.report.system, data=envelope_json(env))
    return repo.save_object(Kind.AUX, records.encode(rec))


def drill_reports(repo, system: str | None = None) -> list[tuple[str, dict]]:
    """(aux name, envelope) of every `drill_report` record (of `system`), oldest first by `time`.
    Unverified: pass each to verify_report before trusting it."""
    from cermin.repo.snapshots import aux_records

    out = []
    for name, rec in aux_records(repo):
        if rec.type != DRILL_REPORT or not isinstance(rec.data, dict):
            continue
        if system is not None and rec.target != system:
            continue
        out.append((rec.time if isinstance(rec.time, str) else "", name, rec.data))
    out.sort(key=lambda x: (x[0], x[1]))
    return [(name, data) for _, name, data in out]


def load_report_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_REPORT_BYTES + 1)
    except OSError as e:
        raise CerminError(f"cannot read {path}: {e.strerror or e}") from None
    return data


# ---- files --------------------------------------------------------------------------------------
def report_basename(r: DrillReport) -> str:
    stamp = r.started[:19].replace("-", "").replace(":", "")
    return f"{stamp}Z-{r.tenant}-{r.system.split('/', 1)[-1]}-{r.id[:8]}"


def write_report_files(env: SignedReport, directory: str) -> tuple[str, str]:
    """The signed JSON and a readable HTML page in `directory`; (json path, html path)."""
    os.makedirs(directory, mode=0o750, exist_ok=True)
    base = os.path.join(directory, report_basename(env.report))
    doc = json.dumps(envelope_json(env), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    _write_atomic(base + ".json", doc.encode())
    _write_atomic(base + ".html", render_html(env, os.path.basename(base) + ".json").encode())
    return base + ".json", base + ".html"


def _write_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _fmt_bytes(n: int) -> str:
    from cermin.util import fmt_bytes

    return fmt_bytes(n)


def _secs(s: float) -> str:
    from cermin.ops.config import fmt_duration

    return f"{s:.1f} s" if s < 120 else f"{fmt_duration(s)} ({s:.0f} s)"


def render_html(env: SignedReport, json_name: str = "") -> str:
    """A self-contained page (inline style, no scripts, every value escaped)."""
    r = env.report
    e = html.escape
    ok = r.verdict == "pass"
    rows_s = "".join(
        f"<tr><td>{e(s.source)}</td><td>{e(s.type)}</td><td><code>{e(s.id[:12])}</code></td><td>{e(s.time[:19])}</td>"
        f"<td>{s.files}</td><td>{e(_fmt_bytes(s.bytes))}</td><td>{s.verified_files}</td>"
        f"<td class='{'bad' if s.errors else 'good'}'>{s.errors}</td><td>{e(s.guard_verdict)}</td>"
        f"<td>{e(_secs(s.seconds))}</td></tr>"
        for s in r.snapshots
    )
    rows_c = "".join(
        f"<tr><td>{e(c.name)}</td><td>{e(c.type)}</td><td>{e(c.source or '—')}</td>"
        f"<td class='{'skip' if c.skipped else 'good' if c.ok else 'bad'}'>"
        f"{'skipped' if c.skipped else 'ok' if c.ok else 'FAILED'}</td><td>{e(c.detail)}</td>"
        f"<td>{e(_secs(c.seconds))}</td></tr>"
        for c in r.checks
    )
    errs = "".join(f"<li>{e(x)}</li>" for x in r.errors)
    verify = f"cermin drill verify {json_name} --key agent.key.pub" if json_name else "cermin drill verify REPORT.json"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Drill {e(r.system)} {e(r.verdict.upper())} {e(r.finished[:19])}</title>
<style>
body{{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:62em;color:#222;padding:0 1em}}
h1{{font-size:1.5em}} table{{border-collapse:collapse;width:100%;margin:.5em 0 1.5em}}
th,td{{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}} th{{background:#f3f3f3}}
.verdict{{display:inline-block;padding:.2em .8em;border-radius:.3em;color:#fff;font-weight:bold;
background:{"#1a7f37" if ok else "#c62828"}}}
.good{{color:#1a7f37}} .bad{{color:#c62828;font-weight:bold}} .skip{{color:#777}}
code{{font-size:.9em}} dl{{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}} dt{{color:#555}}
</style></head><body>
<h1>Restore drill: {e(r.system)} <span class="verdict">{e(r.verdict.upper())}</span></h1>
<dl>
<dt>Tenant / system</dt><dd>{e(r.tenant)} / {e(r.system.split("/", 1)[-1])} (class {e(r.policy)})</dd>
<dt>Restored from</dt><dd>{e(r.copy)} copy: repository {e(r.repository)}
<code>{e(r.repository_id[:12])}</code> at <code>{e(r.location)}</code></dd>
<dt>Snapshots</dt><dd>{e(r.selection)}</dd>
<dt>Measured RTO</dt><dd>{e(_secs(r.rto_measured_s))} — target {e(_secs(r.rto_target_s))}:
<span class="{"good" if r.met else "bad"}">{"met" if r.met else "NOT MET"}</span></dd>
<dt>Started / finished</dt><dd>{e(r.started)} / {e(r.finished)}</dd>
<dt>Agent</dt><dd>{e(r.agent)} on {e(r.host)}, {e(r.cermin_version)}</dd>
<dt>Report id</dt><dd><code>{e(r.id)}</code></dd>
</dl>
<h2>Restored and verified</h2>
<table><tr><th>source</th><th>type</th><th>snapshot</th><th>taken</th><th>files</th><th>size</th>
<th>verified files</th><th>errors</th><th>guard</th><th>time</th></tr>{rows_s}</table>
<h2>Application checks</h2>
{
        f"<table><tr><th>check</th><th>type</th><th>source</th><th>result</th><th>detail</th><th>time</th></tr>{rows_c}</table>"
        if r.checks
        else "<p>No application checks are configured for this system.</p>"
    }
{f"<h2>Errors</h2><ul class='bad'>{errs}</ul>" if errs else ""}
<h2>Signature</h2>
<p>Signed with Ed25519 key <code>{e(env.key_fingerprint)}</code>.
This page is a rendering; the signed record is the JSON file next to it (and the <code>drill_report</code> record in
the repository). Check it with <code>{e(verify)}</code>.</p>
</body></html>
"""


def summary_lines(env: SignedReport) -> list[Line]:
    from cermin.util import plural

    r = env.report
    lines: list[Line] = []
    for s in r.snapshots:
        state = "verified" if s.errors == 0 and s.verified_files == s.files else f"{s.errors} errors"
        lines.append(
            note(
                f"restored {s.source} ({s.type}) snapshot {s.id[:8]} of {s.time[:19]}: {plural(s.files, 'file')}, "
                f"{_fmt_bytes(s.bytes)}, {state}, guard {s.guard_verdict}, {s.seconds:.1f}s"
            )
        )
    for c in r.checks:
        state = "skipped" if c.skipped else "ok" if c.ok else "FAILED"
        lines.append(note(f"check {c.name} ({c.type}): {state} — {c.detail} ({c.seconds:.1f}s)"))
    return lines
