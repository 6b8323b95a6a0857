"""repo/indexfiles.py read_pack_header: the one way a pack's header is fetched from storage."""

from __future__ import annotations

import os

import pytest
from helpers import small_repo

from cermin.backend.base import Kind
from cermin.backend.memory import MemoryBackend
from cermin.errors import CorruptObject
from cermin.format import crypto, pack
from cermin.format.index import encode_entries
from cermin.repo import indexfiles
from cermin.repo.indexfiles import expected_pack_size, read_pack_header


class CountingBackend(MemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.loads: list[tuple[int, int | None]] = []

    def load(self, kind, name, offset=0, length=None):
        if kind is Kind.DATA:
            self.loads.append((offset, length))
        return super().load(kind, name, offset, length)

    def size(self, kind, name):
        return len(self.objects[(kind, name)])


def _store_pack(repo, blobs: int, size: int) -> tuple[str, bytes, list]:
    b = pack.PackBuilder(repo.keys)
    for _ in range(blobs):
        data = os.urandom(size)
        b.add(pack.DATA, repo.blob_id(data), pack.compress(data, 1), len(data))
    entries = list(b.entries)
    data = b.finish()
    name = crypto.file_id(data)
    repo.backend.save(Kind.DATA, name, data)
    return name, data, entries


@pytest.mark.parametrize(
    "blobs,size,requests",
    [
        (3, 100, 1),  # a small pack is read whole, in one request
        (4, 40_000, 2),  # prefix + one tail read holding the whole header
        (2000, 50, 3),  # a header larger than the tail read: one more request
    ],
)
def test_header_fetch_requests(blobs, size, requests):
    be = CountingBackend()
    repo = small_repo(be)
    name, data, entries = _store_pack(repo, blobs, size)
    be.loads.clear()
    assert read_pack_header(repo, name) == entries
    assert len(be.loads) == requests
    if requests > 1:  # ranged reads only: the prefix, then the tail
        assert be.loads[:2] == [
            (0, pack.PREFIX_LEN),
            (len(data) - indexfiles.HEADER_TAIL_READ, indexfiles.HEADER_TAIL_READ),
        ]
    if requests == 3:  # then exactly the header
        assert be.loads[2][1] == blobs * pack.HEADER_ENTRY.size + crypto.TAG_LEN
    be.loads.clear()
    assert read_pack_header(repo, name, data=data) == entries and be.loads == []  # already in hand
    assert expected_pack_size(encode_entries(entries)) == len(data)


def test_hostile_trailer_is_refused_before_reading_more():
    be = CountingBackend()
    repo = small_repo(be)
    name, data, _ = _store_pack(repo, 4, 40_000)
    # a trailer claiming a header larger than the pack: refused from the tail alone
    be.objects[(Kind.DATA, name)] = data[:-4] + (2**32 - 1).to_bytes(4, "little")
    be.loads.clear()
    with pytest.raises(CorruptObject, match="header length"):
        read_pack_header(repo, name)
    assert len(be.loads) == 2
    # a pack shorter than its listed size
    be.objects[(Kind.DATA, name)] = data[: len(data) // 2]
    with pytest.raises(CorruptObject, match="shorter"):
        read_pack_header(repo, name, size=len(data))
    with pytest.raises(CorruptObject, match="truncated"):
        read_pack_header(repo, name, size=10)
