"""Smoke test of bench/guard's simulator: every scenario function runs on a tiny tree (no cermin,
no timing), so the evaluation harness does not rot while the guard changes."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import random
import zipfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "guard"


@pytest.fixture(scope="module")
def guard():
    loader = importlib.machinery.SourceFileLoader("bench_guard", str(BENCH))
    spec = importlib.util.spec_from_loader("bench_guard", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def make_tree(root: Path) -> None:
    rng = random.Random(1)
    for d in ("doc/a", "doc/b", "lib"):
        (root / d).mkdir(parents=True)
    for i in range(12):
        (root / "doc/a" / f"f{i}.txt").write_text(f"line {i}\n" * (200 + 50 * i))
        (root / "doc/b" / f"n{i}.log").write_text("log entry\n" * 300)
    (root / "lib" / "big.bin").write_bytes(b"abc" * (700 << 10))  # > 2 MiB, several 64 KiB blocks
    (root / "lib" / "r.dat").write_bytes(rng.randbytes(5000))


def ctx_for(guard, root: Path) -> dict:
    files = [str(root / p) for p in guard.list_files(str(root))]
    return {"pictures": files[:2], "media": files[2:5], "donors": files}


@pytest.mark.parametrize("mode", ["whole", "first-mib", "intermittent"])
def test_attacks_encrypt_rename_and_drop_notes(guard, tmp_path, mode):
    make_tree(tmp_path)
    before = guard.tree_state(str(tmp_path))
    info = guard.attack(str(tmp_path), random.Random(2), mode, 1.0, ".locked", True)
    assert info["files"] == 26 and info["extension"] == ".locked" and info["notes"] == 3
    after = guard.tree_state(str(tmp_path))
    assert (tmp_path / "doc/a" / guard.NOTE).exists()
    big = (tmp_path / "lib/big.bin.locked").read_bytes()
    assert len(big) == 3 * (700 << 10)  # size kept
    plain = b"abc" * (700 << 10)
    changed = [i for i in range(0, len(big), guard.BLOCK) if big[i : i + guard.BLOCK] != plain[i : i + guard.BLOCK]]
    if mode == "whole":
        assert len(changed) == len(range(0, len(big), guard.BLOCK))
    elif mode == "first-mib":
        assert big[guard.MIB :] == plain[guard.MIB :] and big[: guard.MIB] != plain[: guard.MIB]
    else:
        assert changed == list(range(0, len(big), 2 * guard.BLOCK))
    assert guard.compare_trees(before, str(tmp_path))
    assert not guard.compare_trees(after, str(tmp_path))


def test_small_and_random_extension(guard, tmp_path):
    make_tree(tmp_path)
    info = guard.attack(str(tmp_path), random.Random(3), "whole", 10, "random", False)
    assert info["files"] == 10 and len(info["extension"]) == 6 and info["notes"] == 0
    names = guard.list_files(str(tmp_path))
    assert sum(n.endswith(info["extension"]) for n in names) == 10


def test_benign_scenarios_run(guard, tmp_path):
    for name, setup, fn in guard.BENIGN:
        root = tmp_path / name
        root.mkdir()
        make_tree(root)
        rng = random.Random(4)
        ctx = ctx_for(guard, root)
        if setup:
            setup(str(root), rng, ctx)
        before = guard.tree_state(str(root))
        fn(str(root), rng, ctx)
        assert guard.compare_trees(before, str(root)), name  # the scenario changed something
    rot = guard.list_files(str(tmp_path / "logrotate"))
    assert any(p.endswith(".1.gz") for p in rot)
    z = tmp_path / "new-archives/home/user/Downloads/bundle-0.zip"
    assert zipfile.ZipFile(z).testzip() is None
    pyc = tmp_path / "source-rebuild/home/user/src/project/__pycache__/mod0.cpython-311.pyc"
    assert pyc.read_bytes()[2:4] == b"\r\n"
    gpg = tmp_path / "gpg-files/home/user/private/taxes-2025.tar.gpg"
    assert gpg.read_bytes()[0] & 0x80  # an OpenPGP packet header


def test_scenario_list_and_table(guard):
    scs = guard.scenario_list(1, [10])
    kinds = {s["kind"] for s in scs}
    assert {"whole", "first-mib", "intermittent", "low-slow", "small-10"} <= kinds
    assert {name for name, _, _ in guard.BENIGN} <= kinds
    results = [dict(s, verdict="no verdict", flagged=s["group"] != "benign") for s in scs]
    summary = guard.summarize(results, None, {"has_last_clean": False})
    rows = guard.table(summary)
    assert rows[0][3] == "yes" and summary["benign"]["flagged"] == 0
    assert "skipped" in guard.render(rows)
