"""engine/restore.py: subtrees, filters and sockets; and restore of a snapshot written by an attacker who holds
the password never writes outside its target.

The hostile snapshots are built through the library exactly as a backup writes them (BlobSaver packs tree
and data blobs, then a Snapshot record is saved); only the names, types and links are chosen by the
attacker. Every test watches a directory next to the target and asserts that nothing in it was created,
removed or changed."""

from __future__ import annotations

import json
import os
import stat

import pytest
from conftest import FAST_KDF, PASSWORD, reopen
from helpers import MTIME, Hostile, assert_good_restored, do_backup, do_restore, fs_state, good_entries

from cermin.backend.local import LocalBackend
from cermin.engine import fsmeta
from cermin.engine.restore import RestoreOptions, run_restore
from cermin.engine.restorework import link_first
from cermin.format.records import BLOCKDEV, CHARDEV, FIFO, Node
from cermin.repo.repository import Repository

ROOT = os.geteuid() == 0


@pytest.fixture
def world(tmp_path):
    """tmp/world/{outside/…, target/}: the attacker aims at everything but target."""
    w = tmp_path / "world"
    outside = w / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "victim").write_bytes(b"precious\n")
    os.chmod(outside / "victim", 0o600)
    (outside / "secret").write_bytes(b"secret\n")
    os.mkfifo(outside / "victimfifo", 0o600)
    target = w / "target"
    target.mkdir()  # restoring into an existing directory: the world's own times stay as they are
    before = fs_state(str(w), skip=str(target))
    yield w, outside, target
    assert fs_state(str(w), skip=str(target)) == before, "something outside the target changed"


def restore(repo, sid: str, target, **opts):
    return run_restore(repo, repo.load_snapshot(sid), RestoreOptions(target=str(target), workers=2, **opts))


def listing(target) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), target) for d, ds, fs in os.walk(target) for n in ds + fs}


# ---- bad names -------------------------------------------------------------------------------
def _cases(outside) -> dict:
    """name -> (builder of the hostile entries, entries besides the good ones expected in the target)."""
    return {
        "dotdot-dir": (lambda h: [h.dir(b"..", [h.file(b"pwn", b"x")])], set()),
        "dotdot-path": (lambda h: [h.file(b"../outside/pwn", b"x"), h.file(b"../outside/victim", b"x")], set()),
        "absolute": (lambda h: [h.file(os.fsencode(outside / "victim"), b"x", mode=0o4777)], set()),
        "slash-through-symlink": (
            lambda h: [h.symlink(b"a", outside), h.file(b"a/victim", b"x"), h.file(b"a/pwn", b"x")],
            {"a"},
        ),
        "dot": (lambda h: [h.dir(b".", [h.file(b"pwn", b"x")], mode=0o777)], set()),
        "empty": (lambda h: [h.file(b"", b"x"), h.dir(b"", [])], set()),
        "nul": (lambda h: [h.file(b"a\x00b", b"x"), h.symlink(b"s", b"bad\x00target")], set()),
        "unknown-type": (lambda h: [Node(name=b"weird", type="hardlink", target=os.fsencode(outside))], set()),
        "later-tree-through-symlink": (
            lambda h: [h.symlink(b"x", outside), h.dir(b"y", [h.file(b"../x/pwn", b"x")])],
            {"x", "y"},
        ),
    }


CASES = [
    "dotdot-dir",
    "dotdot-path",
    "absolute",
    "slash-through-symlink",
    "dot",
    "empty",
    "nul",
    "unknown-type",
    "later-tree-through-symlink",
]


@pytest.mark.parametrize("case", CASES)
def test_invalid_names_are_skipped(local_repo, hostile, world, case):
    _, outside, target = world
    build, extra = _cases(outside)[case]
    bad = build(hostile)
    sid = hostile.snapshot([*bad[:1], *good_entries(hostile), *bad[1:]])
    s = restore(local_repo, sid, target)
    assert s.invalid_entries >= 1
    assert len(s.errors) == s.invalid_entries, s.errors
    assert all("invalid entry" in e for e in s.errors), s.errors
    assert_good_restored(target)
    assert listing(target) == {"good", "gooddir", "gooddir/inner"} | extra
    assert stat.S_IMODE(os.stat(target).st_mode) != 0o777  # '.' did not re-mode the target


def test_cli_restore_reports_each_invalid_entry_and_fails(initialized_cli, world, tmp_path):
    cli = initialized_cli
    _, outside, target = world
    from cermin.backend.local import LocalBackend
    from cermin.repo.repository import Repository

    repo = Repository.open(LocalBackend(cli.repo), PASSWORD.encode())
    repo.load_index()
    h = Hostile(repo)
    sid = h.snapshot([h.file(b"../outside/pwn", b"x"), *good_entries(h), h.file(b"a\x00b")])
    r = cli("restore", sid, "--target", str(target), ok=False)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "Traceback" not in err
    assert "error: /: invalid entry '../outside/pwn': name contains '/'" in err
    assert "error: /: invalid entry 'a\\x00b': name contains NUL" in err
    assert "2 entries could not be restored" in err
    assert_good_restored(target)
    r = cli("--json", "restore", sid, "--target", str(tmp_path / "t2"), ok=False)
    summary = [json.loads(line) for line in r.stdout.decode().splitlines()][-1]
    assert summary["message_type"] == "summary" and summary["invalid_entries"] == 2 and summary["errors"] == 2


# ---- duplicates and symlinks -----------------------------------------------------------------
def test_duplicate_name_does_not_replace_first(local_repo, hostile, world):
    _, outside, target = world
    sid = hostile.snapshot(
        [
            hostile.symlink(b"x", outside),
            hostile.dir(b"x", [hostile.file(b"pwn", b"x"), hostile.file(b"victim", b"x")]),
            hostile.file(b"f", b"first\n"),
            hostile.file(b"f", b"second\n", mode=0o4755),
            *good_entries(hostile),
        ]
    )
    s = restore(local_repo, sid, target)
    assert s.invalid_entries == 2, s.errors
    assert any("invalid entry 'x': duplicate name" in e for e in s.errors)
    assert os.readlink(target / "x") == str(outside)  # the first entry stays
    assert (target / "f").read_bytes() == b"first\n"
    assert stat.S_IMODE(os.stat(target / "f").st_mode) == 0o644
    assert_good_restored(target)


def test_duplicate_in_fresh_subdirectory(local_repo, hostile, world):
    _, outside, target = world
    sid = hostile.snapshot(
        [hostile.dir(b"d", [hostile.symlink(b"x", outside), hostile.dir(b"x", [hostile.file(b"pwn", b"x")])])]
    )
    s = restore(local_repo, sid, target)
    assert s.invalid_entries == 1
    assert os.readlink(target / "d" / "x") == str(outside)


def test_hard_link_source_through_symlink(local_repo, hostile, world):
    """A symlink `s` to the outside, a file `s/secret` (first of a hard-link group), then `copy`
    in the same group: neither the outside file is replaced nor linked into the target."""
    _, outside, target = world
    sid = hostile.snapshot(
        [
            hostile.symlink(b"s", outside),
            hostile.file(b"s/secret", b"attacker\n", links=2, inode=99, device=1),
            hostile.file(b"copy", b"copy content\n", links=2, inode=99, device=1),
            *good_entries(hostile),
        ]
    )
    s = restore(local_repo, sid, target)
    assert s.invalid_entries == 1
    assert (target / "copy").read_bytes() == b"copy content\n"
    assert os.stat(target / "copy").st_nlink == 1
    assert_good_restored(target)


def test_hard_links_inside_target_still_work(local_repo, hostile, world):
    _, _, target = world
    sid = hostile.snapshot(
        [
            hostile.dir(b"a", [hostile.file(b"f", b"linked\n", links=3, inode=5, device=1)]),
            hostile.dir(b"b", [hostile.dir(b"c", [hostile.file(b"g", b"linked\n", links=3, inode=5, device=1)])]),
            hostile.file(b"h", b"linked\n", links=3, inode=5, device=1),
        ]
    )
    s = restore(local_repo, sid, target)
    assert not s.errors, s.errors
    ino = os.stat(target / "a" / "f").st_ino
    assert os.stat(target / "b" / "c" / "g").st_ino == ino == os.stat(target / "h").st_ino
    assert os.stat(target / "h").st_nlink == 3


def test_hard_link_source_swapped_for_symlink_is_not_followed(local_repo, hostile, world):
    """The first copy's directory is replaced by a symlink to the outside before the link is made
    (a race staged by hand): the link is refused and nothing outside gains a link."""
    _, outside, target = world
    (target / "d").mkdir(parents=True)
    (target / "d" / "secret").write_bytes(b"mine\n")
    st = os.stat(target / "d" / "secret")
    tfd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(target / "d", target / "d.old")
        os.symlink(outside, target / "d")
        with pytest.raises(OSError):
            link_first(tfd, (b"/d/secret", st.st_dev, st.st_ino), tfd, b"stolen")
        assert not os.path.lexists(target / "stolen")
        os.unlink(target / "d")
        os.symlink("d.old", target / "d")
        with pytest.raises(OSError):  # the right file, but reached through a symlink
            link_first(tfd, (b"/d/secret", st.st_dev, st.st_ino), tfd, b"stolen")
        os.unlink(target / "d")
        os.rename(target / "d.old", target / "d")
        link_first(tfd, (b"/d/secret", st.st_dev, st.st_ino), tfd, b"linked")
        assert os.stat(target / "linked").st_ino == st.st_ino
    finally:
        os.close(tfd)


def test_metadata_of_special_entry_swapped_for_symlink_is_not_followed(world):
    """apply_path_meta on a name that is now a symlink to an outside file (a race staged by hand)
    must not chmod, chown or touch the outside file."""
    _, outside, target = world
    os.symlink(outside / "victim", target / "p")
    dfd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        node = Node(name=b"p", type=FIFO, mode=0o4777, uid=123, gid=456, mtime_ns=MTIME)
        with pytest.raises(OSError):
            fsmeta.apply_path_meta(dfd, b"p", node, lambda m: None)
    finally:
        os.close(dfd)


def test_existing_symlinks_in_target_are_never_followed(local_repo, hostile, world):
    """Restoring into a directory where someone placed symlinks to the outside under the names the
    snapshot uses: each is replaced, none is written, chmodded or chowned through."""
    _, outside, target = world
    for name, to in [("x", outside), ("f", outside / "victim"), ("p", outside / "victimfifo"), ("l", outside)]:
        os.symlink(to, target / name)
    (target / "d").mkdir()
    os.symlink(outside / "secret", target / "d" / "h")
    sid = hostile.snapshot(
        [
            hostile.dir(b"x", [hostile.file(b"victim", b"x", mode=0o4777)], mode=0o777),
            hostile.file(b"f", b"new f\n", mode=0o4777, uid=4321, gid=4321),
            Node(name=b"p", type=FIFO, mode=0o666, uid=4321, mtime_ns=MTIME),
            hostile.symlink(b"l", "elsewhere"),
            hostile.dir(b"d", [hostile.file(b"h", b"new h\n", links=2, inode=3, device=1)]),
            hostile.file(b"h2", b"new h\n", links=2, inode=3, device=1),
        ]
    )
    s = restore(local_repo, sid, target)
    assert not s.errors, s.errors
    assert stat.S_ISDIR(os.lstat(target / "x").st_mode)
    assert (target / "x" / "victim").read_bytes() == b"x"
    assert (target / "f").read_bytes() == b"new f\n"
    assert stat.S_ISFIFO(os.lstat(target / "p").st_mode)
    assert os.readlink(target / "l") == "elsewhere"
    assert os.stat(target / "h2").st_ino == os.stat(target / "d" / "h").st_ino


# ---- options for untrusted snapshots ---------------------------------------------------------
def _special_snapshot(h: Hostile) -> str:
    return h.snapshot(
        [
            h.file(b"suid", b"#!/bin/sh\n", mode=0o4755),
            h.file(b"sgid", b"#!/bin/sh\n", mode=0o2755),
            h.dir(b"shared", [], mode=0o3777),
            Node(name=b"null", type=CHARDEV, mode=0o666, rdev=os.makedev(1, 3), mtime_ns=MTIME),
            Node(name=b"disk", type=BLOCKDEV, mode=0o666, rdev=os.makedev(7, 0), mtime_ns=MTIME),
            Node(name=b"fifo", type=FIFO, mode=0o640, mtime_ns=MTIME),
            *good_entries(h),
        ]
    )


@pytest.mark.skipif(not ROOT, reason="device nodes need root")
def test_no_special_drops_setuid_and_devices(local_repo, hostile, world, tmp_path):
    _, _, target = world
    sid = _special_snapshot(hostile)
    s = restore(local_repo, sid, target, no_special=True)
    assert not s.errors, s.errors
    assert sorted(w.split(":")[0] for w in s.warnings) == ["/disk", "/null"]
    assert all("device node not restored" in w for w in s.warnings)
    assert not os.path.lexists(target / "null") and not os.path.lexists(target / "disk")
    assert stat.S_IMODE(os.stat(target / "suid").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(target / "sgid").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(target / "shared").st_mode) == 0o1777
    assert stat.S_ISFIFO(os.lstat(target / "fifo").st_mode)
    assert_good_restored(target)
    # without the option the same snapshot restores faithfully (so the option is what changed it)
    full = tmp_path / "full"
    s = restore(local_repo, sid, full)
    assert not s.errors, s.errors
    assert stat.S_IMODE(os.stat(full / "suid").st_mode) == 0o4755
    assert stat.S_ISCHR(os.lstat(full / "null").st_mode)


@pytest.mark.skipif(not ROOT, reason="restoring owners needs root")
def test_no_owner_keeps_restoring_user_and_drops_setuid(local_repo, hostile, world, tmp_path):
    _, _, target = world
    sid = hostile.snapshot(
        [
            hostile.file(b"f", b"x", mode=0o4755, uid=12345, gid=54321),
            hostile.dir(b"d", [hostile.symlink(b"l", "f")], uid=12345, gid=54321),
            Node(name=b"p", type=FIFO, mode=0o640, uid=12345, gid=54321, mtime_ns=MTIME),
        ]
    )
    s = restore(local_repo, sid, target, no_owner=True)
    assert not s.errors, s.errors
    for p in ("f", "d", "d/l", "p"):
        st = os.lstat(target / p)
        assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()), p
    assert stat.S_IMODE(os.stat(target / "f").st_mode) == 0o755
    owned = tmp_path / "owned"
    assert not restore(local_repo, sid, owned).errors
    assert (os.lstat(owned / "f").st_uid, os.lstat(owned / "d").st_gid) == (12345, 54321)


CAP_SETUID_EP = bytes.fromhex("0100000280000000000000000000000000000000")  # VFS_CAP_REVISION_2, cap_setuid=ep


@pytest.mark.skipif(not ROOT, reason="security.* and trusted.* xattrs need root")
@pytest.mark.parametrize(
    "flags, kept",
    [
        ({}, {"security.capability", "security.selinux", "trusted.overlay.redirect", "user.note"}),
        ({"no_owner": True}, {"security.selinux", "trusted.overlay.redirect", "user.note"}),
        ({"no_special": True}, {"user.note"}),
        ({"no_owner": True, "no_special": True}, {"user.note"}),
    ],
)
def test_privileged_xattrs_go_with_setuid_bits(local_repo, hostile, world, tmp_path, flags, kept):
    """Dropping setuid/setgid (--no-owner, --no-special) drops file capabilities too; --no-special
    drops every security.* and trusted.* attribute (labels, overlayfs redirects)."""
    _, _, target = world
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    try:
        for k, v in ((b"security.capability", CAP_SETUID_EP), (b"security.selinux", b"x"), (b"trusted.t", b"1")):
            os.setxattr(probe, k, v)
    except OSError:
        pytest.skip("this filesystem or security module does not take these xattrs")
    xattrs = [
        (b"security.capability", CAP_SETUID_EP),
        (b"security.selinux", b"system_u:object_r:bin_t:s0\x00"),
        (b"trusted.overlay.redirect", b"/etc/shadow"),
        (b"user.note", b"v"),
    ]
    sid = hostile.snapshot(
        [
            hostile.file(b"x", b"#!/bin/sh\nid\n", mode=0o755, xattrs=xattrs),
            hostile.dir(b"d", [], xattrs=xattrs[1:]),
            Node(name=b"p", type=FIFO, mode=0o640, mtime_ns=MTIME, xattrs=xattrs[1:3]),  # no user.* on a fifo
        ]
    )
    s = restore(local_repo, sid, target, **flags)
    assert not s.errors, s.errors
    assert {os.fsdecode(k) for k in os.listxattr(target / "x")} == kept
    dir_kept = kept - {"security.capability"}
    assert {os.fsdecode(k) for k in os.listxattr(target / "d")} == dir_kept
    assert {os.fsdecode(k) for k in os.listxattr(target / "p", follow_symlinks=False)} == dir_kept - {"user.note"}


def test_no_xattrs(local_repo, hostile, world, tmp_path):
    _, _, target = world
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, b"user.t", b"1")
    except OSError:
        pytest.skip("no user xattrs on this filesystem")
    sid = hostile.snapshot([hostile.file(b"f", b"x", xattrs=[(b"user.cermin", b"v")])])
    assert not restore(local_repo, sid, target, no_xattrs=True).errors
    assert os.listxattr(target / "f") == []
    assert not restore(local_repo, sid, tmp_path / "with").errors
    assert os.getxattr(tmp_path / "with" / "f", b"user.cermin") == b"v"


def test_bad_values_are_errors_not_tracebacks(local_repo, hostile, world):
    _, _, target = world
    sid = hostile.snapshot(
        [
            hostile.file(b"hugetime", b"x", mtime_ns=2**63 - 1),
            hostile.file(b"hugeuid", b"x", uid=2**40),
            hostile.file(b"xattrnul", b"x", xattrs=[(b"user.a\x00b", b"v")]),
            Node(name=b"dev", type=CHARDEV, rdev=2**64 - 1, mtime_ns=MTIME),
            *good_entries(hostile),
        ]
    )
    s = restore(local_repo, sid, target)
    assert_good_restored(target)
    assert [e.split(":")[0] for e in s.errors] == ["/dev"], s.errors
    assert (target / "hugetime").read_bytes() == b"x"
    if ROOT:
        assert any(w.startswith("/hugeuid: cannot set owner") for w in s.warnings), s.warnings
    assert any(w.startswith("/xattrnul: cannot set xattr") for w in s.warnings), s.warnings


@pytest.mark.skipif(not ROOT, reason="device nodes need root")
def test_cli_untrusted(initialized_cli, world):
    cli = initialized_cli
    _, _, target = world
    from cermin.backend.local import LocalBackend
    from cermin.repo.repository import Repository

    repo = Repository.open(LocalBackend(cli.repo), PASSWORD.encode())
    repo.load_index()
    sid = _special_snapshot(Hostile(repo))
    r = cli("restore", sid, "--target", str(target), "--untrusted")
    assert "device node not restored" in r.stderr.decode()
    assert not os.path.lexists(target / "null")
    assert stat.S_IMODE(os.stat(target / "suid").st_mode) == 0o755


def test_restore_subtree_include_exclude(local_repo, tmp_path):
    src = tmp_path / "src"
    os.makedirs(src / "a" / "b")
    (src / "a" / "b" / "x.conf").write_bytes(b"x")
    (src / "a" / "y.txt").write_bytes(b"y")
    (src / "z.conf").write_bytes(b"z")
    sid = do_backup(local_repo, src).snapshot_id
    base = str(src)
    do_restore(local_repo, sid, tmp_path / "sub", subpath=os.fsencode(base + "/a"))
    assert sorted(os.listdir(tmp_path / "sub")) == ["b", "y.txt"]
    do_restore(local_repo, sid, tmp_path / "inc", includes=["*.conf"])
    got = sorted(
        os.path.relpath(os.path.join(d, f), tmp_path / "inc") for d, _, fs in os.walk(tmp_path / "inc") for f in fs
    )
    assert [g.rsplit("/", 1)[1] for g in got] == ["x.conf", "z.conf"]
    do_restore(local_repo, sid, tmp_path / "exc", excludes=["b"])
    assert not os.path.exists(tmp_path / "exc" / base.lstrip("/") / "a" / "b")
    assert os.path.exists(tmp_path / "exc" / base.lstrip("/") / "a" / "y.txt")
    do_restore(local_repo, sid, tmp_path / "one", subpath=os.fsencode(base + "/a/y.txt"))
    assert os.listdir(tmp_path / "one") == ["y.txt"]


def _bind(path) -> None:
    """Make a Unix socket at path, however long (bound under a short name, then renamed)."""
    import socket

    d = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        s = socket.socket(socket.AF_UNIX)
        s.bind(f"/proc/self/fd/{d}/t")
        s.close()
        os.rename("t", os.path.basename(path), src_dir_fd=d, dst_dir_fd=d)
    finally:
        os.close(d)


def test_unix_sockets_are_recreated_with_metadata(local_repo, tmp_path):
    import stat

    src = tmp_path / "src"
    deep = src / ("d" * 120) / ("e" * 120)  # paths far beyond sun_path's 108 bytes
    deep.mkdir(parents=True)
    socks = [src / "s.sock", deep / ("long-socket-name-" + "x" * 200)]
    for i, p in enumerate(socks):
        _bind(str(p))
        os.chmod(p, 0o640 - 0o100 * i)
        os.utime(p, ns=(1_600_000_000_123_456_789 + i, 1_600_000_000_123_456_789 + i))
    s = do_backup(local_repo, src)
    repo = reopen(local_repo)
    out = tmp_path / "out"
    for _ in range(2):  # the second time over what the first created
        r = do_restore(repo, s.snapshot_id, out)
        assert not r.errors and not r.warnings, (r.errors, r.warnings)
        for i, p in enumerate(socks):
            st = os.lstat(out / str(p).lstrip("/"))
            assert stat.S_ISSOCK(st.st_mode), p
            assert stat.S_IMODE(st.st_mode) == 0o640 - 0o100 * i
            assert st.st_mtime_ns == 1_600_000_000_123_456_789 + i
        assert not [n for _, _, fs in os.walk(out) for n in fs if n.startswith(".cermin-sock-")]


def test_socket_restore_never_follows_a_planted_symlink(local_repo, tmp_path):
    import stat

    src = tmp_path / "src"
    src.mkdir()
    _bind(str(src / "sock"))
    s = do_backup(local_repo, src)
    repo = reopen(local_repo)
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    os.chmod(outside, 0o600)
    out = tmp_path / "out"
    where = out / str(src).lstrip("/")
    where.mkdir(parents=True)
    os.symlink(outside, where / "sock")
    r = do_restore(repo, s.snapshot_id, out)
    assert not r.errors, r.errors
    assert stat.S_ISSOCK(os.lstat(where / "sock").st_mode)
    assert outside.read_bytes() == b"keep" and stat.S_IMODE(os.stat(outside).st_mode) == 0o600


def test_socket_that_cannot_be_made_is_a_warning(local_repo, tmp_path, monkeypatch):
    from cermin.engine import fsmeta

    src = tmp_path / "src"
    src.mkdir()
    _bind(str(src / "sock"))
    (src / "f").write_bytes(b"f")
    s = do_backup(local_repo, src)
    repo = reopen(local_repo)
    monkeypatch.setattr(fsmeta, "proc_path", lambda d, n: b"/nonexistent-proc/" + n)  # as without /proc
    r = do_restore(repo, s.snapshot_id, tmp_path / "out")
    assert not r.errors and [w for w in r.warnings if "sock: socket not restored" in w]
    assert (tmp_path / "out" / str(src).lstrip("/") / "f").read_bytes() == b"f"
    assert not os.path.lexists(tmp_path / "out" / str(src).lstrip("/") / "sock")


@pytest.mark.usefixtures("own_cache")
@pytest.mark.skipif(os.geteuid() != 0, reason="setting security.capability needs root")
def test_no_owner_no_special_drop_file_capabilities(tmp_path):
    """Red-team reproduction (issue 14 review)."""
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode(), kdf=FAST_KDF)
    h = Hostile(repo)
    cap = bytes.fromhex("0100000280000000000000000000000000000000")  # cap_setuid=ep
    sid = h.snapshot([h.file(b"x", b"#!/bin/sh\nid\n", mode=0o755, xattrs=[(b"security.capability", cap)])])
    t = tmp_path / "t"
    run_restore(repo, repo.load_snapshot(sid), RestoreOptions(target=str(t), workers=1, no_owner=True, no_special=True))
    try:
        os.getxattr(t / "x", "security.capability")
    except OSError:
        return
    pytest.fail("a cap_setuid=ep file was restored although --no-owner --no-special were given")
