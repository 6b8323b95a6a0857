"""What the state store accepts (cermin.ops.state): the kinds and statuses it knows, and the checks that
turn a bad value handed in into a `StateError` with one line before it reaches a table."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

import msgspec

from cermin.errors import CerminError
from cermin.ops.config import COPY_KINDS, ResolvedSystem

RUN_KINDS = ("backup", "forget", "prune", "lock_extend", "mirror", "verify", "drill", "hook")
RUN_STATUSES = ("running", "ok", "warning", "failed", "skipped")
FINISHED = ("ok", "warning", "failed", "skipped")
GOOD = ("ok", "warning")  # a run that did its job (warnings: e.g. a file vanished while read)
GUARD_VERDICTS = ("clean", "suspicious", "infected", "unknown")  # cermin.guard.verdict
DRILL_VERDICTS = ("pass", "fail")

_SYSTEM_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}/[a-z0-9][a-z0-9_-]{0,62}$")
_SNAP_ID = re.compile(r"^[0-9a-f]{1,128}$")
_EVENT = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_URL_NAME = re.compile(r"^[a-z][a-z0-9+.-]*://[a-z0-9.:\[\]-]*$", re.I)  # notify.url_name: no user, path or query
MAX_TEXT = 8000  # characters kept of an error text
MAX_DETAILS = 64 * 1024  # bytes of a details document


class StateError(CerminError):
    """The state store cannot be reached, is at an unknown schema, or was handed a bad value."""


# ---- validation --------------------------------------------------------------------------------------------
def _aware(value: Any, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise StateError(f"{what} must be an aware datetime, not {value!r}")
    return value.astimezone(UTC)


def _limit(limit: int) -> int:
    """A caller's row limit, within 1..100,000."""
    return max(1, min(int(limit), 100_000))


def _newest_first(q, when, ident, limit: int, since: datetime | None = None, until: datetime | None = None):
    """`q`'s rows with `when` in [since, until), newest first (ties by `ident`), at most `limit`."""
    if since is not None:
        q = q.where(when >= _aware(since, "since"))
    if until is not None:
        q = q.where(when < _aware(until, "until"))
    return q.order_by(when.desc(), ident.desc()).limit(_limit(limit))


def _opt_time(value: Any, what: str) -> datetime | None:
    return None if value is None else _aware(value, what)


def _system_id(value: Any) -> str:
    if not isinstance(value, str) or not _SYSTEM_ID.match(value):
        raise StateError(f"bad system id {value!r}: expected 'tenant/system'")
    return value


def _one_of(value: Any, allowed: tuple, what: str) -> Any:
    if value not in allowed:
        raise StateError(f"bad {what} {value!r} (expected one of {', '.join(allowed)})")
    return value


def _copy(value: Any, optional: bool = True) -> str:
    """'' stands for 'not about one copy' in the tables (so the unique slot key holds)."""
    if value is None and optional:
        return ""
    return _one_of(value, COPY_KINDS, "copy")


def _name(value: Any, what: str, limit: int = 200) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise StateError(f"bad {what} {value!r}: a printable name of 1..{limit} characters")
    return value


def _snap(value: Any) -> str:
    if not isinstance(value, str) or not _SNAP_ID.match(value):
        raise StateError(f"bad snapshot id {value!r}: expected lower-case hex")
    return value


def _count(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 2**63:
        raise StateError(f"bad {what} {value!r}: a count of 0 or more")
    return value


def _number(value: Any, what: str, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e18:
        raise StateError(f"bad {what} {value!r}: a number of 0 or more")
    return float(value)


def _text(value: Any, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    s = str(value)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _details(value: Any) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StateError("details must be a JSON object")
    try:
        raw = msgspec.json.encode(value)
    except (TypeError, msgspec.EncodeError) as e:
        raise StateError(f"details are not JSON: {e}") from None
    if len(raw) > MAX_DETAILS:
        raise StateError(f"details are {len(raw)} bytes (at most {MAX_DETAILS})")
    return msgspec.json.decode(raw)  # plain JSON types only


def _safe_url(url: str) -> str:
    """A repository URL without credentials, query or fragment (what the dashboard may show)."""
    url = re.sub(r"(://)[^/@]*@", r"\1", url)
    return re.split(r"[?#]", url, maxsplit=1)[0][:1000]


def system_digest(s: ResolvedSystem) -> str:
    """sha256 of a system's resolved configuration: sources, checks, hooks, class terms, copies, schedule."""
    return hashlib.sha256(msgspec.json.encode(s, order="sorted")).hexdigest()


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__
