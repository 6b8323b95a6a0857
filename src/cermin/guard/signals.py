"""Pure functions over backup-event data: what a file's head says its format is, what its name says it
should be, whether its new chunks look like ciphertext, ransomware extensions and ransom-note names.
No I/O, no state: observer.py combines them per snapshot, policy.py holds the thresholds."""

from __future__ import annotations

import re

from cermin.guard import canary, policy

# ---- formats -------------------------------------------------------------------------------------------
# (kind, offset, magic) — the head bytes of a FileRead are the first 16 bytes of the file.
_MAGICS: tuple[tuple[str, int, bytes], ...] = (
    ("pdf", 0, b"%PDF-"),
    ("zip", 0, b"PK\x03\x04"),
    ("zip", 0, b"PK\x05\x06"),  # empty archive
    ("zip", 0, b"PK\x07\x08"),  # spanned
    ("png", 0, b"\x89PNG\r\n\x1a\n"),
    ("jpeg", 0, b"\xff\xd8\xff"),
    ("gif", 0, b"GIF87a"),
    ("gif", 0, b"GIF89a"),
    ("gzip", 0, b"\x1f\x8b"),
    ("sqlite", 0, b"SQLite format 3\x00"),
    ("elf", 0, b"\x7fELF"),
    ("bz2", 0, b"BZh"),
    ("xz", 0, b"\xfd7zXZ\x00"),
    ("zstd", 0, b"\x28\xb5\x2f\xfd"),
    ("7z", 0, b"7z\xbc\xaf\x27\x1c"),
    ("rar", 0, b"Rar!\x1a\x07"),
    ("ole", 0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"),
    ("riff", 0, b"RIFF"),
    ("ftyp", 4, b"ftyp"),
    ("ogg", 0, b"OggS"),
    ("flac", 0, b"fLaC"),
    ("mp3", 0, b"ID3"),
    ("class", 0, b"\xca\xfe\xba\xbe"),
    ("bmp", 0, b"BM"),
    ("tiff", 0, b"II*\x00"),
    ("tiff", 0, b"MM\x00*"),
    ("woff", 0, b"wOFF"),
    ("woff", 0, b"wOF2"),
    ("font", 0, b"\x00\x01\x00\x00"),
    ("font", 0, b"OTTO"),
    ("ps", 0, b"%!PS"),
    ("rtf", 0, b"{\\rtf"),
    ("xml", 0, b"<?xml"),
    ("lz4", 0, b"\x04\x22\x4d\x18"),
    ("mach-o", 0, b"\xcf\xfa\xed\xfe"),
    ("pe", 0, b"MZ"),
    ("ico", 0, b"\x00\x00\x01\x00"),
)

# Extensions whose files must start with a known magic (a name says PDF but the bytes do not).
EXPECTED_KIND: dict[bytes, str] = {
    b"pdf": "pdf",
    **{e: "zip" for e in (b"zip", b"docx", b"xlsx", b"pptx", b"odt", b"ods", b"odp", b"jar", b"apk", b"epub", b"whl")},
    b"png": "png",
    b"jpg": "jpeg",
    b"jpeg": "jpeg",
    b"gif": "gif",
    b"gz": "gzip",
    b"tgz": "gzip",
    b"sqlite": "sqlite",
    b"sqlite3": "sqlite",
    b"so": "elf",
    b"bz2": "bz2",
    b"xz": "xz",
    b"zst": "zstd",
    b"7z": "7z",
    b"rar": "rar",
    b"doc": "ole",
    b"xls": "ole",
    b"ppt": "ole",
    b"msi": "ole",
    b"wav": "riff",
    b"avi": "riff",
    b"webp": "riff",
    b"mp4": "ftyp",
    b"m4a": "ftyp",
    b"mov": "ftyp",
    b"heic": "ftyp",
    b"ogg": "ogg",
    b"flac": "flac",
    b"class": "class",
    b"bmp": "bmp",
    b"tif": "tiff",
    b"tiff": "tiff",
    b"woff": "woff",
    b"woff2": "woff",
    b"exe": "pe",
    b"dll": "pe",
}


_BY_FIRST: dict[int, tuple[tuple[str, int, bytes], ...]] = {}
for _m in _MAGICS:
    if _m[1] == 0:
        _BY_FIRST[_m[2][0]] = (*_BY_FIRST.get(_m[2][0], ()), _m)
_AT_OFFSET = tuple(m for m in _MAGICS if m[1])


def kind_of(head: bytes) -> str:
    """The format a file's first bytes announce, or "" (text and unknown binaries alike)."""
    if not head:
        return ""
    for kind, _, magic in _BY_FIRST.get(head[0], ()):
        if head.startswith(magic):
            return kind
    for kind, off, magic in _AT_OFFSET:
        if head[off : off + len(magic)] == magic:
            return kind
    return ""


def extension(name: bytes) -> bytes:
    """The last extension of a base name, lower case, without the dot; b"" for none or a dotfile."""
    dot = name.rfind(b".")
    return name[dot + 1 :].lower() if dot > 0 else b""


def basename(path: bytes) -> bytes:
    return path.rsplit(b"/", 1)[-1]


def dirname(path: bytes) -> bytes:
    return path.rsplit(b"/", 1)[0] if b"/" in path else b""


def magic_mismatch(name: bytes, head: bytes, size: int) -> bool:
    """The name promises a format with a fixed magic and the head does not carry it."""
    want = EXPECTED_KIND.get(extension(name))
    if want is None or size < 16:
        return False
    return kind_of(head) != want


# ---- compressibility and entropy -----------------------------------------------------------------------
def chunk_stats(chunks) -> tuple[int, float, float]:
    """(raw bytes, stored/raw, incompressible share) over a file's new chunks (stored > 0): the share is
    that of raw bytes in chunks storing at >= INCOMPRESSIBLE (ciphertext-like). (0, -1.0, 0.0) when no
    chunk is new. One pass: this runs for every file a backup reads."""
    raw = stored = bad = 0
    limit = policy.INCOMPRESSIBLE
    for r, s in chunks:
        if s > 0:
            raw += r
            stored += s
            if s >= limit * r:
                bad += r
    return (raw, stored / raw, bad / raw) if raw else (0, -1.0, 0.0)


def ciphertext_head(head_entropy: float, size: int) -> bool:
    """The head's histogram is as flat as ciphertext's (only meaningful on >= MIN_ENTROPY_BYTES)."""
    return size >= policy.MIN_ENTROPY_BYTES and head_entropy >= policy.HIGH_ENTROPY


def compressibility_loss(prev_ratio: float, new_raw: int, new_ratio: float, share: float) -> bool:
    """The file was compressible before and its changed regions are not any more.

    Whole-file and first-MiB encryption make the new chunks ciphertext (ratio ~1); every-other-block
    encryption makes them half ciphertext: the ratio rises by RATIO_RISE or more."""
    if prev_ratio < 0 or prev_ratio > policy.COMPRESSIBLE or new_raw < policy.MIN_CIPHER_BYTES:
        return False
    if new_ratio >= policy.INCOMPRESSIBLE:  # ciphertext, at any size (small files included)
        return True
    if new_raw < policy.MIN_COMPARE_BYTES:
        return False
    return share >= 0.5 or new_ratio - prev_ratio >= policy.RATIO_RISE


# ---- names ---------------------------------------------------------------------------------------------
RANSOM_EXTENSIONS = frozenset(
    e.encode()
    for e in (
        "locked locky encrypted encrypt crypted crypt crypto cryp1 crypz cryptolocker enc1 cerber cerber2 "
        "cerber3 zepto odin aesir osiris wncry wnry wcry wncryt ryk ryuk conti lockbit djvu "
        "pay2key payransom ransom ransomed kraken darkness nochance cry cryptowall vvv ezz exx "
        "breaking_bad dharma phobos eking makop clop ciop blackcat "
        "hive royal akira babuk avaddon revil sodinokibi maze egregor ragnar nefilim darkside blackmatter "
        "medusa rhysida basta 8base lockergoga megacortex snatch netwalker mailto globeimposter gandcrab "
        "krab cripted encrypted_files fucked r5a"
    ).split()
)

_NOTE = re.compile(
    rb"(decrypt|recover|restore|unlock|ransom|encrypted|your[_ -]?files|how[_ -]?to|read[_ -]?me[_ -!]|"
    rb"!+read|instruction|_readme|help[_ -]?(file|decrypt|restore|recover)|attention|warning)",
    re.I,
)
# An image note (a wallpaper or a picture beside the text note) must say more: icon themes ship
# dialog-warning.png, view-restore.png and network-wireless-encrypted.png in every size directory.
_NOTE_STRONG = re.compile(
    rb"(decrypt|ransom|your[_ -]?files|files[_ -]?(are[_ -]?)?encrypted"
    rb"|(recover|restore|unlock)[_ -]?(my[_ -]?|your[_ -]?)?files|read[_ -]?me[_ -!]|!+read|_readme)",
    re.I,
)
_NOTE_TEXT_EXT = frozenset((b"txt", b"html", b"htm", b"hta", b"rtf", b"url", b""))
_NOTE_IMAGE_EXT = frozenset((b"png", b"bmp", b"jpg"))


def ransom_note_name(name: bytes) -> bool:
    """The name looks like a ransom note (README_DECRYPT.txt, HOW_TO_RECOVER_FILES.html, _readme.txt ...)."""
    if len(name) > 80:
        return False
    ext = extension(name)
    if ext in _NOTE_TEXT_EXT:
        return _NOTE.search(name) is not None
    return ext in _NOTE_IMAGE_EXT and _NOTE_STRONG.search(name) is not None


def appended_extension(new_name: bytes, removed_names) -> bytes | None:
    """The extension `new_name` adds to a removed name of the same directory (a.txt -> a.txt.xyz), or None.

    Also catches appended markers like a.txt.id-1234.[mail].xyz: the removed name is a prefix."""
    dot = new_name.rfind(b".")
    while dot > 0:
        stem = new_name[:dot]
        if stem in removed_names:
            return extension(new_name)
        dot = new_name.rfind(b".", 0, dot)
    return None


def canary_name(name: bytes) -> bool:
    return name.startswith(canary.PREFIX)
