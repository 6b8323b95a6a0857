"""How results render themselves, for the CLI (and anyone else who prints them).

Every operation in `cermin.ops.commands` returns a result with
- `to_json() -> list[dict]`: the JSON lines of docs/json.md, `message_type` included, in order;
- `to_text(verbose: int = 0) -> list[Line]`: lines for people, each with its kind;
- `exit_code: int` (0 unless the answer itself is bad news: damage found, an incomplete backup, ...).
A Line's kind says where it goes: ANSWER (stdout, even with -q), NOTE (stdout chatter, dropped
with -q), WARNING / ERROR (stderr, prefixed `warning:` / `error:`), STDERR (stderr as is).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

ANSWER, NOTE, WARNING, ERROR, STDERR = "answer", "note", "warning", "error", "stderr"


class Line(NamedTuple):
    kind: str
    text: str


def answer(text: str) -> Line:
    return Line(ANSWER, text)


def note(text: str) -> Line:
    return Line(NOTE, text)


def warning(text: str) -> Line:
    return Line(WARNING, text)


def error(text: str) -> Line:
    return Line(ERROR, text)


def fail(text: str) -> Line:
    """The final `cermin: error: ...` line of a command whose answer is bad news (text mode only)."""
    return Line(STDERR, f"cermin: error: {text}")


def warning_json(msg: str) -> dict:
    return {"message_type": "warning", "message": msg}


def error_json(msg: str) -> dict:
    return {"message_type": "error", "message": msg}


class Result(Protocol):
    @property
    def exit_code(self) -> int: ...

    def to_json(self) -> list[dict]: ...

    def to_text(self, verbose: int = 0) -> list[Line]: ...


class Combined:
    """Several results of one command, rendered in order (e.g. check, then the lock extension)."""

    def __init__(self, *parts: Result | None) -> None:
        self.parts = [p for p in parts if p is not None]

    @property
    def exit_code(self) -> int:
        return next((p.exit_code for p in self.parts if p.exit_code), 0)

    def to_json(self) -> list[dict]:
        return [d for p in self.parts for d in p.to_json()]

    def to_text(self, verbose: int = 0) -> list[Line]:
        return [ln for p in self.parts for ln in p.to_text(verbose)]
