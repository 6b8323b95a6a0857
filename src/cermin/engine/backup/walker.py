"""Walking the backup targets: directories listed through dir fds, excludes, cache tags, one file
system, stat and the unchanged check against the parent snapshot, and the trees of the path
components above the targets. Runs on the calling thread; changed files go to the FileSaver, which
hands them to worker processes and takes their results between directories."""

from __future__ import annotations

import os
from stat import S_ISREG

from cermin.engine import fsmeta
from cermin.engine.backup.filesaver import FileSaver
from cermin.engine.backup.state import BackupState
from cermin.engine.backup.trees import DirJob, Trees
from cermin.engine.fsread import CACHEDIR_TAG, Excluder, WalkPath, is_cache_dir
from cermin.engine.observer import FileUnchanged
from cermin.format.records import DIR, FILE, ID_LEN, SYMLINK, Node
from cermin.util import display_path


def unchanged(prev: Node | None, st: os.stat_result) -> bool:
    return (
        prev is not None
        and prev.type == FILE
        and prev.size == st.st_size
        and prev.mtime_ns == st.st_mtime_ns
        and prev.ctime_ns == st.st_ctime_ns
        and prev.inode == st.st_ino
    )


def same_file(prev: Node | None, st: os.stat_result) -> bool:
    """Unchanged, and every other field `fsmeta.node_from_stat` takes from `st` equals the previous
    node's too, so that node can be kept whole."""
    return (
        unchanged(prev, st)
        and len(prev.content) % ID_LEN == 0  # whole blob ids (a damaged tree could say otherwise)
        and not prev.subtree
        and not prev.target
        and prev.device == st.st_dev
        and prev.mode == (st.st_mode & 0o7777)
        and prev.uid == st.st_uid
        and prev.gid == st.st_gid
        and prev.links == st.st_nlink
        and prev.rdev == 0
        and S_ISREG(st.st_mode)
        and prev.user == fsmeta.user_name(st.st_uid)
        and prev.group == fsmeta.group_name(st.st_gid)
    )


def path_tree(paths: list[bytes]) -> dict:
    """Nest absolute paths into {component: subtree or None (a target)}; {None: None} for "/"."""
    root: dict = {}
    for p in paths:
        parts = [c for c in p.split(b"/") if c]
        if not parts:  # backing up "/"
            return {None: None}
        d = root
        for c in parts[:-1]:
            d = d.setdefault(c, {})
        d[parts[-1]] = None
    return root


class Walker:
    def __init__(
        self,
        state: BackupState,
        trees: Trees,
        files: FileSaver,
        excludes: list[str],
        exclude_caches: bool,
        one_file_system: bool,
    ) -> None:
        self.st = state
        self.trees = trees
        self.files = files
        self._excl = Excluder(excludes)
        self.exclude_caches = exclude_caches
        self.one_file_system = one_file_system
        self._root_dev = 0

    def walk_targets(self, paths: list[bytes], parent_tree: bytes) -> bytes:
        """Back up the target paths; returns the root tree id once everything below it is stored."""
        return self._save_virtual(path_tree(paths), b"", parent_tree)

    def _save_virtual(self, tree: dict, prefix: bytes, parent_tree: bytes) -> bytes:
        """Trees for the path components above the targets, then the targets themselves."""
        if None in tree:  # "/" itself
            job = self.trees.job(None, 0, WalkPath(None, b""), None, root=True)
            fd = os.open(b"/", os.O_RDONLY | os.O_DIRECTORY)
            try:
                self._root_dev = os.fstat(fd).st_dev
                self._walk_dir(fd, WalkPath(None, b""), parent_tree, job)
            finally:
                os.close(fd)
            return self._wait(job)
        prev = self.trees.child_nodes(parent_tree)
        job = self.trees.job(None, 0, WalkPath(None, prefix), prev, root=True)
        for name in sorted(tree):
            full = prefix + b"/" + name
            sub = tree[name]
            if sub is None:
                dfd = os.open(prefix or b"/", os.O_RDONLY | os.O_DIRECTORY)
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    self._root_dev = st.st_dev
                    self._save_entry(dfd, name, st, WalkPath(None, prefix), prev.get(name), job)
                finally:
                    os.close(dfd)
                continue
            node = fsmeta.node_from_stat(name, os.lstat(full), DIR)
            p = prev.get(name)
            node.subtree = self._save_virtual(sub, full, p.subtree if p and p.type == DIR else b"")
            job.nodes.append(node)
        self.trees.listed(job)
        return self._wait(job)

    def _wait(self, job: DirJob) -> bytes:
        self.files.drain()  # nothing more will be added before this tree is needed
        return self.trees.wait(job)

    def _walk_dir(self, dfd: int, path: WalkPath, parent_tree: bytes, job: DirJob) -> None:
        st = self.st
        prev = self.trees.child_nodes(parent_tree, job)
        if st.obs is not None:
            job.prev = prev  # for the entries removed since, reported when the tree is complete
        try:
            names = sorted(os.fsencode(n) for n in os.listdir(dfd))
        except OSError as e:
            st.error(path.join(b""), f"cannot list directory: {e.strerror}")
            names = []
            job.prev = None  # what it held is unknown, not removed
        if self.exclude_caches and CACHEDIR_TAG in names and is_cache_dir(dfd):
            names = [CACHEDIR_TAG]
        excl, get, nodes = self._excl, prev.get, job.nodes
        same: list[tuple[int, os.stat_result]] = []  # files whose every stat field is as before
        for name in names:
            if st.fatal is not None:
                raise st.fatal
            full = path.join(name) if excl else b""
            if excl and excl.excluded(name, full):
                continue
            try:
                stat = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                st.error(path.join(name), "vanished before it could be read")
                continue
            except OSError as e:
                st.error(path.join(name), f"cannot stat: {e.strerror}")
                continue
            p = get(name)
            if same_file(p, stat):
                same.append((len(nodes), stat))
                nodes.append(p)  # the previous node is this one; kept if its blobs are all stored
                continue
            self._save_entry(dfd, name, stat, path, p, job)
        if same:
            self._carry_over(dfd, path, job, same)
        st.progress.dirs += 1
        self.trees.listed(job)
        self.files.poll()

    def _carry_over(self, dfd: int, path: WalkPath, job: DirJob, same: list[tuple[int, os.stat_result]]) -> None:
        """Files that look unchanged are unchanged when every blob they name is stored (a pruned one
        means reading the file again): one vectorised index search for the whole directory."""
        st, s, nodes = self.st, self.st.sum, job.nodes
        all_stored = st.repo.index.contains_all(b"".join(nodes[i].content for i, _ in same))
        for i, stat in same:
            p = nodes[i]
            s.total_files += 1
            s.total_bytes += stat.st_size
            if all_stored or all(b in st.saver for b in p.blob_ids()):
                s.files_unmodified += 1
                st.progress.files += 1
                if st.obs is not None:
                    st.obs.file_unchanged(FileUnchanged(path.join(p.name), p.size, p.mtime_ns))
                continue
            node = nodes[i] = fsmeta.node_from_stat(p.name, stat, FILE)
            if self.files.empty.known(stat, dfd, p.name, job):
                self.files.save_empty(dfd, p.name, stat, path, p, node)
            else:
                self.files.submit(dfd, p.name, stat, path, p, node, job, slot=i)

    def _save_entry(
        self, dfd: int, name: bytes, st: os.stat_result, path: WalkPath, prev: Node | None, job: DirJob
    ) -> None:
        """Add the entry's node to `job`: complete now, or completed later by a worker or subtree."""
        ntype = fsmeta.node_type(st.st_mode)
        if ntype is None:
            self.st.warn(f"{display_path(path.join(name))}: unknown file type, skipped")
            return
        node = fsmeta.node_from_stat(name, st, ntype)
        s = self.st.sum
        if ntype == DIR:
            self._save_subdir(dfd, name, st, path, prev, node, job)
            return
        if ntype == FILE:
            s.total_files += 1
            s.total_bytes += st.st_size
            if unchanged(prev, st) and all(b in self.st.saver for b in prev.blob_ids()):
                node.content = prev.content
                node.xattrs = prev.xattrs  # an xattr change moves ctime, so these are current
                node.extra = prev.extra  # same content: per-file fingerprints (guard) stay valid
                s.files_unmodified += 1
                self.st.progress.files += 1
                job.nodes.append(node)
                if self.st.obs is not None:
                    self.st.obs.file_unchanged(FileUnchanged(path.join(name), node.size, node.mtime_ns))
                return
            if self.files.empty.known(st, dfd, name, job):
                job.nodes.append(self.files.save_empty(dfd, name, st, path, prev, node))
                return
            self.files.submit(dfd, name, st, path, prev, node, job)
            return
        s.other += 1
        if ntype == SYMLINK:
            try:
                node.target = os.readlink(name, dir_fd=dfd)
            except OSError as e:
                self.st.error(path.join(name), f"cannot read symlink: {e.strerror}")
                return
        else:
            try:
                node.xattrs = fsmeta.read_xattrs(fsmeta.proc_path(dfd, name))
            except OSError:
                pass
        job.nodes.append(node)

    def _save_subdir(self, dfd, name, st, path, prev, node, job: DirJob) -> None:
        self.st.sum.dirs += 1
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
        except FileNotFoundError:
            self.st.error(path.join(name), "vanished before it could be read")
            return
        except OSError as e:
            self.st.error(path.join(name), f"cannot open directory: {e.strerror}")
            return
        try:
            try:
                node.xattrs = fsmeta.read_xattrs(fd)
            except OSError as e:
                self.st.warn(f"{display_path(path.join(name))}: cannot read xattrs: {e.strerror}")
            if self.one_file_system and st.st_dev != self._root_dev:
                node.subtree = self.trees.store([])  # mount point kept, its contents are not
                job.nodes.append(node)
                return
            sub = WalkPath(path, name)
            child = self.trees.job(job, len(job.nodes), sub, None)
            job.nodes.append(node)
            self.trees.add_pending(job)
            prev_tree = prev.subtree if prev is not None and prev.type == DIR else b""
            self._walk_dir(fd, sub, prev_tree, child)
        finally:
            os.close(fd)
