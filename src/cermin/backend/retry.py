"""The one retrying layer: a wrapper around any backend (after restic's internal/backend/retry).

Drivers do not retry. They raise `TransientError` for what may succeed if tried again (connection
refused or reset, timeouts, 5xx answers, throttling) and typed permanent errors for everything else
(ObjectNotFound, ObjectExists, ObjectLocked, AccessDenied, a bad request, a failed precondition),
which this layer passes through at once. The S3 and HTTP client libraries are set to retry nothing
themselves (obstore max_retries=0, boto3 max_attempts=1), so budgets never multiply.

Budget of one call (the documented worst case; docs/design.md "Backends"):

- `LONG` (once the endpoint has answered anything in this process): at most 10 attempts, with
  backoff 0.5, 1, 2, 4, 8, 16, 16, 16, 16 s between them (79.5 s in all), each delay jittered to
  50-100 % of its value; and no new attempt starts more than 90 s after the first one began. A
  restarting server (SeaweedFS answers ~1 s after launch) is thus waited for about a minute, and a
  call gives up at most 90 s after it started plus the duration of the attempt in flight, which the
  drivers bound (connect timeout 5 s; S3 reads 60 s; HTTP reads 300 s).
- `PROBE` (until the endpoint has answered once): 3 attempts, backoff 0.5 and 1 s, no new attempt
  after 10 s. The first request of a command is the one that finds a wrong or dead endpoint; that
  is a configuration error to report in seconds, not a minute later.

Then the last error is raised as one `BackendUnavailable` that names it, the attempts and the time.

A create whose answer was lost is recognised on retry: when `save` answers ObjectExists on a second
or later attempt for a content-addressed name (every kind but config and locks) and the object there
has the size of ours, an earlier attempt stored it (names are content hashes). Likewise a `remove`
retried after a lost answer may find the object gone: that is success.

Thread-safe: many threads (the uploaders) share one RetryBackend; each call has its own budget.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cermin.backend.base import Backend, BackendWrapper, Kind, Leftover
from cermin.errors import BackendUnavailable, ObjectExists, ObjectNotFound, TransientError


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int  # tries of one call, the first included
    initial: float  # first delay, seconds; doubled after each attempt
    max_delay: float  # cap of one delay
    total: float  # no attempt starts later than this many seconds after the first one

    def delay(self, attempt: int) -> float:
        """The un-jittered wait after failed attempt number `attempt` (0-based)."""
        return min(self.max_delay, self.initial * 2**attempt)

    def worst_sleep(self) -> float:
        """Upper bound of the time spent sleeping in one call (before the total cap)."""
        return sum(self.delay(i) for i in range(self.attempts - 1))


LONG = RetryPolicy(attempts=10, initial=0.5, max_delay=16.0, total=90.0)
PROBE = RetryPolicy(attempts=3, initial=0.5, max_delay=1.0, total=10.0)


class RetryBackend(BackendWrapper):
    """Retries TransientError of `inner` within a bounded budget; everything else passes through.

    `sleep`, `clock` and `jitter` (a float in [0, 1)) are injectable for tests."""

    def __init__(
        self,
        inner: Backend,
        policy: RetryPolicy = LONG,
        probe: RetryPolicy | None = PROBE,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(inner)
        self.policy = policy
        self.probe = probe
        self._sleep, self._clock, self._jitter = sleep, clock, jitter
        self.answered = probe is None  # has the endpoint answered anything yet?
        self.retries = 0  # transient failures retried, over every call (for tests and diagnostics)

    # ---- the loop -----------------------------------------------------------------------------------
    def _run(self, fn: Callable, *args, lost_answer: Callable[[Exception], bool] | None = None):
        """fn(*args) with retries. `lost_answer(error)` is asked when a permanent error follows a
        transient one: True means an earlier attempt did the work and its answer was lost."""
        policy = self.policy if self.answered else (self.probe or self.policy)
        start = self._clock()
        attempt = 0
        while True:
            try:
                out = fn(*args)
            except TransientError as e:
                elapsed = self._clock() - start
                delay = policy.delay(attempt) * (0.5 + self._jitter() / 2)
                attempt += 1
                if attempt >= policy.attempts or elapsed + delay > policy.total:
                    raise BackendUnavailable(
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__} "
                        f"(gave up after {attempt} attempt{'s' if attempt != 1 else ''} in {elapsed:.0f} s)"
                    ) from None
                self.retries += 1
                self._sleep(delay)
                continue
            except Exception as e:
                self.answered = True  # a permanent error is an answer too
                if attempt and lost_answer is not None and lost_answer(e):
                    return None
                raise
            self.answered = True
            return out

    # ---- protocol -----------------------------------------------------------------------------------
    def create(self) -> None:
        self._run(self.inner.create)

    def save(self, kind: Kind, name: str, data) -> None:
        def ours(e: Exception) -> bool:
            if not isinstance(e, ObjectExists) or kind in (Kind.LOCK, Kind.CONFIG):
                return False
            # An earlier attempt reached the storage but its answer was lost. Names are content
            # hashes, so a complete object under this name is ours.
            try:
                return self._run(self.inner.size, kind, name) == len(data)
            except Exception:
                return False

        self._run(self.inner.save, kind, name, data, lost_answer=ours)

    def load(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._run(self.inner.load, kind, name, offset, length)

    def size(self, kind: Kind, name: str) -> int:
        return self._run(self.inner.size, kind, name)

    def list(self, kind: Kind):
        # Drivers may page lazily: a listing is retried as a whole, so it is read to the end here.
        return iter(self._run(lambda: list(self.inner.list(kind))))

    def remove(self, kind: Kind, name: str) -> None:
        def gone(e: Exception) -> bool:
            return isinstance(e, ObjectNotFound)  # an earlier attempt removed it

        self._run(self.inner.remove, kind, name, lost_answer=gone)

    def exists(self, kind: Kind, name: str) -> bool:
        return self._run(self.inner.exists, kind, name)

    def close(self) -> None:
        self.inner.close()

    # ---- capability methods ---------------------------------------------------------------------------
    def configure(self, extra: dict) -> None:
        self.inner.configure(extra)

    def load_original(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._run(self.inner.load_original, kind, name, offset, length)

    def original_version(self, kind: Kind, name: str) -> str:
        return self._run(self.inner.original_version, kind, name)

    def original_versions(self, kind: Kind) -> dict[str, tuple[str, int]]:
        return self._run(self.inner.original_versions, kind)

    def first_written(self, kind: Kind) -> dict[str, float]:
        return self._run(self.inner.first_written, kind)

    def hidden(self) -> list[str]:
        return self._run(self.inner.hidden)

    def unhide(self) -> list[str]:
        return self._run(self.inner.unhide)

    def retention(self, kind: Kind, name: str, version: str | None = None) -> datetime | None:
        return self._run(self.inner.retention, kind, name, version)

    def extend_retention(self, kind: Kind, name: str, until: datetime, version: str | None = None) -> None:
        self._run(self.inner.extend_retention, kind, name, until, version)

    def remove_many(self, items: list[tuple[Kind, str]]) -> str | None:
        return self._run(self.inner.remove_many, list(items))

    def leftovers(self) -> list[Leftover]:
        return self._run(self.inner.leftovers)

    def remove_leftover(self, path: str) -> None:
        self._run(self.inner.remove_leftover, path)


def unwrap(backend) -> Backend:
    """The driver under the retry layer, for driver-specific calls (the server's approvals)."""
    return backend.inner if isinstance(backend, RetryBackend) else backend
