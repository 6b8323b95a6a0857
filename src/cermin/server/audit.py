"""The server's audit log: one JSON line per decision, appended by every worker process, with refusals
rate-limited per client address and per token (counters shared by the workers in a small SQLite table)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time

from starlette.requests import Request

AUDIT_FIELD = 256  # characters kept of client-supplied fields in the audit log
AUDIT_ANON_PER_MIN = 20  # unauthenticated refusals logged per client address and minute
AUDIT_ANON_TOTAL_PER_MIN = 200
AUDIT_TOKEN_PER_MIN = 30  # refusals (and routine own-lock removals) logged per token and minute


class AuditLog:
    def __init__(self, path: str, rate_path: str) -> None:
        self.path = path
        self._rate_path = rate_path  # shared by every worker
        self._rate_db = threading.local()

    def write(self, request: Request, status: int, reason: str, token_id: str = "", throttle: bool = False) -> None:
        """Append one line. Refusals (and `throttle`d routine lines) are rate-limited: per client
        address without a token, per token with one; what is dropped is counted in a later line."""
        remote = (request.client.host if request.client else "")[:64]
        if status >= 400 or throttle:
            key = ("token", token_id[:32]) if token_id else ("addr", remote)
            if not self._allowed(key):
                return
        rec = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "remote": remote,
            "method": request.method[:10],
            "path": clip(request.url.path),
            "token": token_id[:32],
            "status": status,
            "reason": clip(reason),
            "worker": os.getpid(),
        }
        self._append(rec)

    def _append(self, rec: dict) -> None:
        """One write(2) with O_APPEND: lines of several threads and worker processes never mix."""
        line = json.dumps(rec, ensure_ascii=True) + "\n"  # one line whatever the client sent
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def _rate(self) -> sqlite3.Connection:
        """This thread's connection to the audit rate table (shared by every worker process)."""
        db = getattr(self._rate_db, "conn", None)
        if db is None:
            db = sqlite3.connect(self._rate_path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")  # counters for one minute: losing them in a crash is harmless
            db.execute(
                "CREATE TABLE IF NOT EXISTS rate (key TEXT PRIMARY KEY, start REAL, lines INTEGER, suppressed INTEGER)"
            )
            self._rate_db.conn = db
        return db

    def _allowed(self, key: tuple[str, str]) -> bool:
        """At most AUDIT_ANON_PER_MIN lines per address and minute without a token (200 in all), and
        AUDIT_TOKEN_PER_MIN per token; what is suppressed is summed up in one line when the address
        or token is next logged."""
        now = time.time()
        anon = key[0] == "addr"
        limit = AUDIT_ANON_PER_MIN if anon else AUDIT_TOKEN_PER_MIN
        k = f"{key[0]}:{key[1]}"
        db = self._rate()
        db.execute("BEGIN IMMEDIATE")
        try:

            def slot(k: str) -> list:
                row = db.execute("SELECT start, lines, suppressed FROM rate WHERE key = ?", (k,)).fetchone()
                return list(row) if row else [now, 0, 0]

            def put(k: str, v: list) -> None:
                db.execute("INSERT OR REPLACE INTO rate VALUES (?, ?, ?, ?)", (k, *v))

            total = slot("*anon*")
            if now - total[0] > 60:
                total = [now, 0, 0]
            mine = slot(k)
            if mine[1] == 0 and mine[2] == 0:  # a new key: keep the table small
                if db.execute("SELECT COUNT(*) FROM rate").fetchone()[0] > 10_000:
                    db.execute("DELETE FROM rate WHERE start < ?", (now - 60,))
                    if db.execute("SELECT COUNT(*) FROM rate").fetchone()[0] > 10_000:
                        db.execute("DELETE FROM rate")
            suppressed = 0
            if now - mine[0] > 60:
                suppressed, mine = mine[2], [now, 0, 0]
            if mine[1] >= limit or (anon and total[1] >= AUDIT_ANON_TOTAL_PER_MIN):
                mine[2] += 1
                put(k, mine)
                db.execute("COMMIT")
                return False
            mine[1] += 1
            put(k, mine)
            if anon:
                total[1] += 1
                put("*anon*", total)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if suppressed:
            who = "unauthenticated requests" if anon else "refusals or own-lock removals of this token"
            self._append(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "remote" if anon else "token": key[1],
                    "status": 401 if anon else 0,
                    "reason": f"{suppressed} more {who} not logged (rate limit)",
                }
            )
        return True


def clip(s: str, n: int = AUDIT_FIELD) -> str:
    return s if len(s) <= n else s[:n] + f"...({len(s)} chars)"
