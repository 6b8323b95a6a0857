"""guard/signals.py: the pure checks the guard's verdict is built from."""

from __future__ import annotations

import os
import zlib

from cermin.engine.observer import head_facts
from cermin.guard import policy
from cermin.guard import signals as sig


def test_kind_of_magics():
    assert sig.kind_of(b"%PDF-1.7\n") == "pdf"
    assert sig.kind_of(b"PK\x03\x04rest") == "zip"
    assert sig.kind_of(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sig.kind_of(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sig.kind_of(b"GIF89a") == "gif"
    assert sig.kind_of(b"\x1f\x8b\x08\x00") == "gzip"
    assert sig.kind_of(b"SQLite format 3\x00") == "sqlite"
    assert sig.kind_of(b"\x7fELF\x02\x01") == "elf"
    assert sig.kind_of(b"\x00\x00\x00\x18ftypmp42") == "ftyp"
    assert sig.kind_of(b"hello world") == "" and sig.kind_of(b"") == ""


def test_magic_mismatch_by_extension():
    assert sig.magic_mismatch(b"a.PDF", os.urandom(16), 5000)
    assert not sig.magic_mismatch(b"a.pdf", b"%PDF-1.4\n1234567", 5000)
    assert sig.magic_mismatch(b"b.docx", b"%PDF-1.4\n1234567", 5000)
    assert not sig.magic_mismatch(b"b.xlsx", b"PK\x03\x04" + bytes(12), 5000)
    assert not sig.magic_mismatch(b"notes.txt", os.urandom(16), 5000)  # no fixed magic for text
    assert not sig.magic_mismatch(b"tiny.png", b"", 0)
    assert sig.extension(b".bashrc") == b"" and sig.extension(b"a.tar.GZ") == b"gz"


def test_compressibility_loss():
    # whole-file / first-MiB: new chunks are ciphertext
    assert sig.compressibility_loss(0.3, 1 << 20, 1.0, 1.0)
    # every other block: half ciphertext, the ratio rises by ~0.35
    assert sig.compressibility_loss(0.3, 1 << 20, 0.66, 0.0)
    # an edit of a text file: same ratio
    assert not sig.compressibility_loss(0.3, 1 << 20, 0.33, 0.0)
    # a file that never compressed (media, archives, gpg) is no witness
    assert not sig.compressibility_loss(0.99, 1 << 20, 1.0, 1.0)
    assert not sig.compressibility_loss(-1.0, 1 << 20, 1.0, 1.0)  # unknown previous
    assert not sig.compressibility_loss(0.3, 100, 1.0, 1.0)  # too small to judge


def test_chunk_stats_ratio_and_share():
    chunks = ((1000, 0), (1000, 1005), (2000, 600))  # one deduplicated, one ciphertext, one text
    raw, ratio, share = sig.chunk_stats(chunks)
    assert raw == 3000 and abs(ratio - 1605 / 3000) < 1e-9
    assert abs(share - 1 / 3) < 1e-9
    assert sig.chunk_stats(((10, 0),)) == (0, -1.0, 0.0)


def test_ciphertext_head_needs_enough_bytes():
    _, e_rand = head_facts(os.urandom(4096))
    _, e_text = head_facts(b"the quick brown fox jumps over the lazy dog " * 100)
    _, e_zlib = head_facts(zlib.compress(os.urandom(2000) * 3))
    assert sig.ciphertext_head(e_rand, 4096) and not sig.ciphertext_head(e_text, 4096)
    assert not sig.ciphertext_head(e_rand, 100)
    assert e_zlib > policy.LOW_ENTROPY  # compressed data is flat too: why entropy never decides alone


def test_ransom_names():
    for n in (
        b"README_DECRYPT.txt",
        b"HOW_TO_RECOVER_FILES.html",
        b"_readme.txt",
        b"!!!READ_ME!!!.txt",
        b"RESTORE-MY-FILES.TXT",
        b"DECRYPT_INSTRUCTIONS.html",
        b"YOUR_FILES_ARE_ENCRYPTED.txt",
    ):
        assert sig.ransom_note_name(n), n
    for n in (b"README.md", b"README", b"readme.txt", b"notes.txt", b"restore.py", b"howto.pdf", b"HELP.md"):
        assert not sig.ransom_note_name(n), n
    # Pictures: a note's wallpaper says what it is; icon themes repeat these names in every size directory
    for n in (b"YOUR_FILES_ARE_ENCRYPTED.png", b"decrypt-info.bmp", b"RESTORE_MY_FILES.jpg"):
        assert sig.ransom_note_name(n), n
    for n in (b"dialog-warning-symbolic.symbolic.png", b"network-wireless-encrypted.png", b"view-restore.png"):
        assert not sig.ransom_note_name(n), n
    assert b"lockbit" in sig.RANSOM_EXTENSIONS and b"locked" in sig.RANSOM_EXTENSIONS
    for legit in (b"lock", b"java", b"txt", b"gz", b"gpg", b"bak", b"enc", b"py"):
        assert legit not in sig.RANSOM_EXTENSIONS


def test_appended_extension():
    removed = {b"a.txt": {}, b"b.docx": {}}
    assert sig.appended_extension(b"a.txt.xyz", removed) == b"xyz"
    assert sig.appended_extension(b"b.docx.id-1234.[x@y].zzz", removed) == b"zzz"
    assert sig.appended_extension(b"c.txt.xyz", removed) is None
    assert sig.appended_extension(b"a.txt", removed) is None
    assert sig.canary_name(b".cermin-canary-1234.txt") and not sig.canary_name(b"canary.txt")
