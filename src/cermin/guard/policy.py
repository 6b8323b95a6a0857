"""Thresholds of the ransomware guard, with why each has its value. Signals are in signals.py, their
combination per snapshot in observer.py. Do not tune these to one simulator: each rests on a property that
holds for any encryption (ciphertext does not compress and has no format structure)."""

from __future__ import annotations

import math

from cermin.engine.observer import ENTROPY_MIN_BYTES

# ---- compressibility (stored/raw of a file's new chunks; zstd, cermin's pack compression) ----------
# Ciphertext stores at >= ~1.0 of its size (zstd falls back to raw, plus a frame header); already-compressed
# formats (gz, jpeg, zip) store at 0.97..1.0. Below 0.95 some part of the data still compressed.
INCOMPRESSIBLE = 0.95
# Text, source, office XML, databases, ELF and most logs store at 0.1..0.6; 0.8 leaves room for mixed
# content while a file above it was never a good witness (its encryption cannot show as a loss).
COMPRESSIBLE = 0.80
# Intermittent encryption (every other block) leaves a chunk half ciphertext: its ratio rises by about
# (1 - r_prev) / 2 >= 0.2 when r_prev <= 0.6. Ordinary edits of a text file move it by a few hundredths.
RATIO_RISE = 0.25
# Below this many new raw bytes, small changes of the ratio are noise (zstd's frame overhead, tiny
# dictionaries): the RATIO_RISE and half-incompressible rules need this much.
MIN_COMPARE_BYTES = 2048
# Ciphertext never compresses, however short (zstd stores it at >= its size): a file that compressed to
# <= COMPRESSIBLE and whose new bytes (this many or more) now store at >= INCOMPRESSIBLE was encrypted.
# Shorter files are not judged; files too small to compress are never witnesses (their ratio is above
# COMPRESSIBLE already).
MIN_CIPHER_BYTES = 256

# ---- head entropy (bits/byte over the first 4 KiB) ---------------------------------------------------
# Ciphertext's 4 KiB histogram measures ~7.95; compressed data 7.6..7.99 (hence never alone); text 4..5.5.
HIGH_ENTROPY = 7.5
# A head at or below this was structured (text, tables, headers) before: a jump from it to HIGH_ENTROPY
# is a change of nature, not an edit.
LOW_ENTROPY = 6.5
# A small file's histogram cannot reach 8 bits: log2(n) caps it. Heads shorter than this are not judged
# (the backup does not estimate their entropy: FileRead.head_entropy is -1).
MIN_ENTROPY_BYTES = ENTROPY_MIN_BYTES

# ---- evidence per file (points; a snapshot's points turn into its score) ----------------------------
STRONG = 1.0  # a file that almost surely was encrypted (format broken, or compressible -> ciphertext)
WEAK = 0.5  # one property of encryption but a plausible benign reading (magic intact, small change)
# Score = 1 - exp(-points / SCALE): 3 points -> 0.50 (suspicious), 10 points -> 0.901 (infected). Three
# files that turned into ciphertext are rare in benign churn; ten are an attack (the target: an
# attack on 10 files is flagged).
SCALE = 3 / math.log(2)  # 4.33
SUSPICIOUS_SCORE = 0.50
INFECTED_SCORE = 0.90

# ---- names -------------------------------------------------------------------------------------------
# Files gaining one and the same new extension (name.ext -> name.ext.xyz) in one snapshot: a handful is a
# user's habit (.bak, .orig); this many, with an unknown extension, is a renaming encryptor.
RENAME_MIN = 5
# A ransom-note-like name appearing new in this many directories is a note drop (one is often a real README).
NOTE_DIRS = 3
NOTE_POINTS = 5.0  # notes dropped in NOTE_DIRS directories: suspicious on their own, infected with anything
KNOWN_EXT_POINTS = 1.0  # per file renamed to a known ransomware extension

# ---- mass changes ------------------------------------------------------------------------------------
# Deleting or rewriting most of a tree happens (a rebuild, a cleanup) but together with any encryption
# evidence it tips the verdict: these add points, never a verdict alone.
MASS_MIN_FILES = 50  # below this many files, fractions are too noisy to mean anything
MASS_DELETE_FRACTION = 0.5
MASS_REWRITE_FRACTION = 0.7
SHRINK_FRACTION = 0.5  # the source lost more than half its bytes
MASS_POINTS = 1.0

# ---- a stream (a stdin backup: a database dump, a SQLite copy, a command's output) ------------------
# Its one file is the whole source, compared with the previous dump of the same name: a dump that turned
# into ciphertext is all of the source encrypted, as ten files of a tree are (STRONG -> infected; WEAK ->
# suspicious). A dump keeps its nature between runs (text stays text, a database file keeps its magic):
# benign edits change rows, not the compressibility of the whole.
STREAM_FACTOR = 10.0
# A stream that lost most of its bytes is a source emptied (suspicious on its own, as a tree losing 90%
# of its files); one that lost half a source shrank (points, never a verdict alone). Only streams of at
# least MIN_COMPARE_BYTES before are judged: a tiny command output going empty means nothing.
STREAM_EMPTIED_FRACTION = 0.9
STREAM_EMPTIED_POINTS = 3.0

MAX_PATHS = 100  # affected paths kept in the verdict
