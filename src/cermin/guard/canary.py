"""Canary files: decoys planted in the source whose any change or removal is an alarm (`cermin guard canary
plant PATH`). Their names start with PREFIX, so the guard recognises them in any backup; their content is
compressible text behind a real document header, so encryption of one also shows in every other signal."""

from __future__ import annotations

import os
import secrets

PREFIX = b".cermin-canary"

_BODY = (
    "cermin canary file. Do not edit, move or delete: the backup guard raises an alarm when this file changes.\n"
    "Quarterly figures, contracts and passwords are kept in this folder for the finance team.\n"
)


def plant(directory: str | bytes, count: int = 2) -> list[bytes]:
    """Write `count` canary files into `directory` (created if missing); returns their paths."""
    d = os.fsencode(directory)
    os.makedirs(d, exist_ok=True)
    kinds = [(b".txt", b""), (b".pdf", b"%PDF-1.4\n% cermin canary\n")]
    out = []
    for i in range(count):
        ext, header = kinds[i % len(kinds)]
        name = PREFIX + b"-" + secrets.token_hex(4).encode() + ext
        path = os.path.join(d, name)
        body = header + (_BODY * 64).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
        out.append(path)
    return out


def is_canary(name: bytes) -> bool:
    return name.startswith(PREFIX)
