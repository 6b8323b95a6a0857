"""Tree completion: a directory's tree blob is stored when its last entry is done, by whichever thread
finishes that entry, so the walker never waits at a directory boundary. Also the parent snapshot's
trees (what the walker compares with) and, for observers, what a directory lost since then."""

from __future__ import annotations

import threading

from cermin.engine.backup.state import BackupState
from cermin.engine.fsread import WalkPath
from cermin.engine.observer import DirectoryDone, FileRemoved
from cermin.errors import CerminError
from cermin.format import pack, records
from cermin.format.records import DIR, FILE, Node, Tree


def node_fingerprint(node: Node, key: str) -> tuple:
    """A node's extra[key] dict as sorted (key, value) pairs of primitives, for an event."""
    fp = node.extra.get(key) if key else None
    if not isinstance(fp, dict):
        return ()
    return tuple(sorted((k, v) for k, v in fp.items() if isinstance(k, str) and isinstance(v, (int, float, str))))


class DirJob:
    """A directory being backed up: its nodes, and how many of them are still being worked on."""

    __slots__ = ("nodes", "pending", "listed", "parent", "slot", "tree_id", "done", "path", "prev", "same")

    def __init__(
        self, parent: DirJob | None, slot: int, path: WalkPath, prev: dict[bytes, Node] | None, root: bool = False
    ) -> None:
        self.nodes: list[Node | None] = []  # None: an entry that could not be read
        self.pending = 0  # files being read and subdirectories not yet stored
        self.listed = False  # the walker has added every entry
        self.parent = parent
        self.slot = slot  # index of this directory's node in the parent's nodes
        self.tree_id = b""
        self.done = threading.Event() if root else None
        self.path = path
        self.prev = prev  # the parent snapshot's entries, kept only when observers want removals
        self.same: tuple[bytes, list[Node]] | None = None  # the parent's tree: its id and nodes, in order


class Trees:
    def __init__(self, state: BackupState) -> None:
        self.st = state

    def child_nodes(self, tree_id: bytes, job: DirJob | None = None) -> dict[bytes, Node]:
        """The entries of a tree of the parent snapshot, by name; `job` (the directory compared with it)
        may keep that tree's id when its new entries turn out equal (`_complete`)."""
        if not tree_id:
            return {}
        try:
            nodes = self.st.repo.load_tree(tree_id, cache=False).nodes
        except CerminError as e:
            self.st.warn(f"parent tree unreadable, files are re-read: {e}")
            return {}
        if job is not None:
            job.same = (tree_id, nodes)
        return {n.name: n for n in nodes}

    def job(
        self, parent: DirJob | None, slot: int, path: WalkPath, prev: dict[bytes, Node] | None, root: bool = False
    ) -> DirJob:
        return DirJob(parent, slot, path, prev if self.st.obs is not None else None, root)

    def store(self, nodes: list[Node]) -> bytes:
        data = records.encode(Tree(nodes=nodes))
        tid = self.st.repo.tree_id(data)
        self.st.saver.save(pack.TREE, tid, data)
        return tid

    def add_pending(self, job: DirJob) -> None:
        with self.st.mutex:
            job.pending += 1

    def listed(self, job: DirJob) -> None:
        """The walker has added every entry of `job`."""
        with self.st.mutex:
            job.listed = True
            ready = job.pending == 0
        if ready:
            self._complete(job)

    def entry_done(self, job: DirJob) -> None:
        """A pending entry of `job` (a file read by a worker) is done."""
        with self.st.mutex:
            job.pending -= 1
            ready = job.listed and job.pending == 0
        if ready:
            self._complete(job)

    def _complete(self, job: DirJob | None) -> None:
        mutex = self.st.mutex
        while job is not None:
            nodes = [n for n in job.nodes if n is not None]
            if self.st.obs is not None:
                self._report(job, nodes)
            same, job.same = job.same, None
            if same is not None and nodes == same[1]:  # entries as before (carried-over nodes, same subtrees)
                job.tree_id = same[0]  # stored, and verified against its id when it was read
            else:
                job.tree_id = self.store(nodes)
            job.nodes = []
            parent = job.parent
            if parent is None:
                job.done.set()
                return
            parent.nodes[job.slot].subtree = job.tree_id
            with mutex:
                parent.pending -= 1
                ready = parent.listed and parent.pending == 0
            job = parent if ready else None

    def _report(self, job: DirJob, nodes: list[Node]) -> None:
        obs = self.st.obs
        files = dirs = 0
        for n in nodes:
            if n.type == FILE:
                files += 1
            elif n.type == DIR:
                dirs += 1
        removed = 0
        if job.prev:
            present = {n.name for n in nodes}
            failed = self.st.error_paths
            for name, n in job.prev.items():
                if name not in present:
                    path = job.path.join(name)
                    if path not in failed:  # an entry that failed is an error, not a removal
                        removed += 1
                        size, fp = (n.size, node_fingerprint(n, obs.node_key)) if n.type == FILE else (0, ())
                        obs.file_removed(FileRemoved(path, n.type, size, fp))
            job.prev = None
        obs.directory(DirectoryDone(job.path.full(), files, dirs, len(nodes) - files - dirs, removed))

    def wait(self, job: DirJob) -> bytes:
        """The root job's tree id, once every file handed out is done (FileSaver.drain)."""
        self.st.check()
        if not job.done.is_set():
            raise CerminError("internal error: a directory was left incomplete after every file was done")
        return job.tree_id
