"""What the parts of one backup share: counters, warnings and errors, the first fatal failure, observers."""

from __future__ import annotations

import threading

from cermin.engine.observer import BackupError, BackupObserver, Observers
from cermin.format.records import SnapshotSummary
from cermin.repo.repository import Repository
from cermin.repo.saver import BlobSaver
from cermin.util import display_path


class BackupState:
    def __init__(self, repo: Repository, saver: BlobSaver, progress, observers: list[BackupObserver]) -> None:
        self.repo = repo
        self.saver = saver
        self.progress = progress  # BackupProgress: approximate live counters, written without locks
        self.sum = SnapshotSummary()  # exact counters: changed under `mutex` once workers run
        self.mutex = threading.Lock()  # counters, messages and directory completion
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.fatal: BaseException | None = None  # the first storage failure: the backup stops
        self.error_paths: set[bytes] = set()  # with observers: entries that failed are not "removed"
        obs = Observers(observers, self._observer_failed)
        self.obs: Observers | None = obs if obs else None  # None: no event is even built
        self.fingerprint = bool(obs) and obs.fingerprint

    def warn(self, msg: str) -> None:
        with self.mutex:
            self.warnings.append(msg)

    def error(self, path: bytes, msg: str) -> None:
        with self.mutex:
            self.errors.append(f"{display_path(path)}: {msg}")
            if self.obs is not None:
                self.error_paths.add(path)
        if self.obs is not None:
            self.obs.error(BackupError(path, msg))

    def _observer_failed(self, msg: str) -> None:
        with self.mutex:
            self.errors.append(msg)
        if self.obs is not None:
            self.obs.error(BackupError(b"", msg))

    def check(self) -> None:
        """Raise the fatal failure a worker recorded, if any."""
        if self.fatal is not None:
            raise self.fatal
