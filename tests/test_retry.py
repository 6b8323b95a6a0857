"""The one retrying layer (backend/retry.py): transient errors retried within a bounded budget and then
surfaced as one error, permanent ones at once, a lost answer recognised; drivers classify their errors."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import backup, make_source, reopen, restores_identically, small_repo
from seaweed import free_ports

from cermin.backend.base import Kind
from cermin.backend.faulty import FaultyBackend, InjectedTransient
from cermin.backend.memory import MemoryBackend
from cermin.backend.retry import LONG, PROBE, RetryBackend
from cermin.engine.check import run_check
from cermin.errors import (
    AccessDenied,
    BackendUnavailable,
    CerminError,
    ObjectExists,
    ObjectNotFound,
    TransientError,
)
from cermin.format.crypto import file_id


class FakeClock:
    """time.monotonic and time.sleep for the layer: sleeping advances the clock; each attempt may cost
    `per_call` seconds of (fake) time too."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


class Flaky:
    """A backend whose next `failures` calls of `op` raise TransientError (after doing the work when
    `lost_answer`: the request reached the storage, its answer did not come back)."""

    def __init__(self, inner, op: str, failures: int, lost_answer: bool = False, error=TransientError) -> None:
        self.inner, self.op, self.failures, self.lost_answer, self.error = inner, op, failures, lost_answer, error
        self.calls = 0
        self.location, self.caps, self.lock = inner.location, inner.caps, None

    def __getattr__(self, name):
        fn = getattr(self.inner, name)
        if name != self.op:
            return fn

        def call(*args):
            self.calls += 1
            if self.failures:
                self.failures -= 1
                if self.lost_answer:
                    fn(*args)
                raise self.error(f"connection reset during {name}")
            return fn(*args)

        return call


def layer(inner, clock: FakeClock, answered: bool = True, **kw) -> RetryBackend:
    r = RetryBackend(inner, sleep=clock.sleep, clock=clock.clock, jitter=lambda: 1.0, **kw)
    r.answered = answered
    return r


def test_transient_errors_are_retried_within_the_budget_then_surfaced_as_one_error():
    clock = FakeClock()
    mem = MemoryBackend()
    mem.save(Kind.DATA, "ab", b"x")
    flaky = Flaky(mem, "load", failures=3)
    assert layer(flaky, clock).load(Kind.DATA, "ab") == b"x"
    assert flaky.calls == 4 and clock.sleeps == [0.5, 1.0, 2.0]

    clock = FakeClock()
    dead = Flaky(mem, "load", failures=10**6)
    with pytest.raises(BackendUnavailable, match=r"connection reset during load \(gave up after 10 attempts in 80 s\)"):
        layer(dead, clock).load(Kind.DATA, "ab")
    assert dead.calls == LONG.attempts == 10
    assert clock.sleeps == [0.5, 1, 2, 4, 8, 16, 16, 16, 16]
    assert sum(clock.sleeps) == LONG.worst_sleep() == 79.5 <= LONG.total
    assert not isinstance(BackendUnavailable("x"), TransientError), "an exhausted budget is never retried again"


def test_the_total_time_cap_bounds_slow_attempts():
    """Attempts that each take 20 s (a connect timeout, say): no new attempt after 90 s."""
    clock = FakeClock()
    mem = MemoryBackend()

    class Slow(Flaky):
        def __getattr__(self, name):
            fn = super().__getattr__(name)

            def call(*args):
                clock.now += 20
                return fn(*args)

            return call

    slow = Slow(mem, "size", failures=10**6)
    with pytest.raises(BackendUnavailable):
        layer(slow, clock).size(Kind.DATA, "ab")
    # attempts end at 20, 40.5, 61.5, 83.5 (+ 4 s wait = 87.5 <= 90), 107.5: no sixth one
    assert slow.calls == 5 and clock.now <= LONG.total + 20


def test_permanent_errors_are_not_retried():
    clock = FakeClock()
    mem = MemoryBackend()
    r = layer(mem, clock)
    with pytest.raises(ObjectNotFound):
        r.load(Kind.DATA, "missing")
    mem.save(Kind.DATA, "ab", b"x")
    with pytest.raises(ObjectExists):
        r.save(Kind.DATA, "ab", b"x")  # a first attempt's ObjectExists is a real conflict
    denied = Flaky(mem, "list", failures=5, error=AccessDenied)
    with pytest.raises(AccessDenied):
        layer(denied, clock).list(Kind.DATA)
    assert denied.calls == 1 and clock.sleeps == []


def test_the_first_request_gets_the_short_probe_budget_until_the_endpoint_answers():
    """A wrong or dead endpoint is reported in seconds; once it has answered, a restart is waited for."""
    clock = FakeClock()
    mem = MemoryBackend()
    mem.save(Kind.CONFIG, "config", b"{}")
    dead = Flaky(mem, "load", failures=10**6)
    r = layer(dead, clock, answered=False)
    with pytest.raises(BackendUnavailable, match="gave up after 3 attempts"):
        r.load(Kind.CONFIG, "config")
    assert dead.calls == PROBE.attempts == 3 and sum(clock.sleeps) <= PROBE.total
    assert r.size(Kind.CONFIG, "config") == 2  # the endpoint answers: from now on the long budget
    dead.calls, clock.sleeps = 0, []
    with pytest.raises(BackendUnavailable, match="gave up after 10 attempts"):
        r.load(Kind.CONFIG, "config")
    assert dead.calls == 10


@pytest.mark.parametrize("kind", [Kind.DATA, Kind.INDEX, Kind.SNAPSHOT, Kind.KEY])
def test_a_create_whose_answer_was_lost_is_recognised_on_retry(kind):
    clock = FakeClock()
    mem = MemoryBackend()
    data = b"sealed object" * 100
    lost = Flaky(mem, "save", failures=1, lost_answer=True)
    layer(lost, clock).save(kind, file_id(data), data)  # stored, answer lost, retry: ObjectExists = ours
    assert lost.calls == 2 and mem.load(kind, file_id(data)) == data


def test_a_lost_answer_is_not_mistaken_for_ours_when_it_cannot_be():
    clock = FakeClock()
    mem = MemoryBackend()
    data = b"lock record"
    for kind in (Kind.LOCK, Kind.CONFIG):  # names that are not content hashes: a conflict stays one
        with pytest.raises(ObjectExists):
            layer(Flaky(mem, "save", failures=1, lost_answer=True), clock).save(kind, "n", data)
    mem.save(Kind.DATA, "cd", b"someone else's, of another size")
    with pytest.raises(ObjectExists):
        layer(Flaky(mem, "save", failures=1), clock).save(Kind.DATA, "cd", b"ours")


def test_a_remove_whose_answer_was_lost_succeeds():
    clock = FakeClock()
    mem = MemoryBackend()
    mem.save(Kind.LOCK, "l1", b"x")
    layer(Flaky(mem, "remove", failures=1, lost_answer=True), clock).remove(Kind.LOCK, "l1")
    assert not mem.exists(Kind.LOCK, "l1")


def test_faulty_fail_mode_is_transient_and_counts_capability_methods():
    mem = MemoryBackend()
    mem.save(Kind.DATA, "ab", b"x")
    f = FaultyBackend(mem, mode="fail", at=1, only="load_original")
    with pytest.raises(InjectedTransient):
        f.load_original(Kind.DATA, "ab")
    assert f.fired and f.load_original(Kind.DATA, "ab") == b"x" and f.calls == 2
    f = FaultyBackend(mem, mode="fail", at=1, only="remove_many")
    clock = FakeClock()
    assert layer(f, clock).remove_many([(Kind.DATA, "ab")]) is None and f.calls == 2
    assert not mem.exists(Kind.DATA, "ab") and clock.sleeps == [0.5]
    f = FaultyBackend(mem, mode="crash", at=1)
    with pytest.raises(CerminError) as e:
        layer(f, clock).list(Kind.DATA)
    assert not isinstance(e.value, TransientError), "a crash is permanent: never retried"


def test_backup_survives_one_transient_failure_at_any_call(tmp_path):
    """A sweep: a dropped connection at any backend call of a backup is retried invisibly."""
    src = tmp_path / "src"
    make_source(src, files=6)
    mem = MemoryBackend()
    small_repo(mem)
    repo = reopen(mem)
    counter = FaultyBackend(mem)
    repo.backend = counter
    backup(repo, src)
    n = counter.calls
    assert n >= 5  # locks, pack, index, snapshot
    for at in range(1, n + 1):
        inner = MemoryBackend()
        inner.objects = {k: v for k, v in mem.objects.items() if k[0] in (Kind.CONFIG, Kind.KEY)}
        repo = reopen(inner)
        faulty = FaultyBackend(inner, mode="fail", at=at)
        clock = FakeClock()
        repo.backend = layer(faulty, clock)
        sid = backup(repo, src)
        assert faulty.fired and clock.sleeps == [0.5], at
        repo = reopen(inner)
        assert run_check(repo, read_data=True).ok, at
        restores_identically(repo, sid, src, tmp_path / f"out{at}")


# ---- the drivers classify their errors --------------------------------------------------------------


def test_http_driver_raises_transient_on_refused_connections_and_5xx(monkeypatch):
    from cermin.backend.http import HttpBackend

    port = free_ports(1)[0]
    with pytest.raises(TransientError, match="cannot reach the repository server"):
        HttpBackend(f"http://127.0.0.1:{port}/t", token="x").size(Kind.DATA, "ab")

    answers = [503, 503, 401]

    class H(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(answers.pop(0))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        b = HttpBackend(f"http://127.0.0.1:{srv.server_address[1]}/t", token="x")
        with pytest.raises(TransientError, match="503"):
            b.size(Kind.DATA, "ab")  # the driver itself does not retry
        assert answers == [503, 401]
        clock = FakeClock()
        with pytest.raises(AccessDenied, match="refused the token"):
            layer(b, clock).size(Kind.DATA, "ab")  # 503 retried once, then a permanent refusal
        assert clock.sleeps == [0.5] and answers == []
    finally:
        srv.shutdown()


def test_s3_driver_sorts_library_errors_into_transient_and_permanent(monkeypatch):
    import botocore.exceptions as be
    import obstore.exceptions as oe

    from cermin.backend.s3 import S3Backend

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    b = S3Backend("s3:http://127.0.0.1:9/bucket/p")

    def client_error(code: str, status: int):
        return be.ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")

    cases = [
        (client_error("SlowDown", 503), TransientError),
        (client_error("InternalError", 500), TransientError),
        (client_error("NoSuchKey", 404), ObjectNotFound),
        (client_error("AccessDenied", 403), AccessDenied),
        (client_error("InvalidRequest", 400), CerminError),
        (be.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), TransientError),
        (be.ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), TransientError),
        (oe.GenericError("Error performing PUT x - Server returned non-2xx status code: 503 Slow"), TransientError),
        (oe.GenericError("Error performing PUT x - Server returned non-2xx status code: 400 Bad Request"), CerminError),
        (oe.GenericError("Error performing GET x - HTTP error: error sending request"), TransientError),
        (oe.AlreadyExistsError("exists"), ObjectExists),
        (oe.PermissionDeniedError("denied"), AccessDenied),
        (FileNotFoundError("gone"), ObjectNotFound),
    ]
    for exc, want in cases:
        got = b._wrap(exc, "data/ab")
        assert type(got) is want, (exc, got)


def test_s3_libraries_do_not_retry_underneath_the_layer(monkeypatch):
    """Budgets must not multiply: a refused connection costs one request per attempt of the layer,
    not a library's own backoff each time."""
    import time

    from cermin.backend.s3 import S3Backend

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    port = free_ports(1)[0]
    clock = FakeClock()
    r = layer(S3Backend(f"s3:http://127.0.0.1:{port}/bucket/p"), clock)
    t = time.monotonic()
    for call in (
        lambda: r.load(Kind.DATA, "ab"),
        lambda: r.size(Kind.INDEX, "ab"),
        lambda: r.load(Kind.CONFIG, "config"),
    ):
        with pytest.raises(BackendUnavailable, match="gave up after 10 attempts"):
            call()
    assert len(clock.sleeps) == 27
    assert time.monotonic() - t < 10, "a library retried on its own underneath"


def test_open_backend_wraps_remote_backends_only(monkeypatch, tmp_path):
    from cermin.backend import open_backend
    from cermin.backend.local import LocalBackend

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    monkeypatch.setenv("CERMIN_TOKEN", "t")
    assert isinstance(open_backend("s3:http://127.0.0.1:9/bucket"), RetryBackend)
    assert isinstance(open_backend("http://127.0.0.1:9/tenant"), RetryBackend)
    assert isinstance(open_backend(str(tmp_path / "r")), LocalBackend)  # a disk raises no TransientError
    assert open_backend("s3:http://127.0.0.1:9/bucket").caps.retention


def test_wrappers_have_the_whole_protocol_and_pass_capabilities_through():
    from cermin.backend.base import Backend, Capabilities

    mem = MemoryBackend()
    for wrapped in (RetryBackend(mem), FaultyBackend(mem), RetryBackend(FaultyBackend(mem))):
        assert isinstance(wrapped, Backend)
        assert wrapped.caps == mem.caps == Capabilities() and wrapped.lock is None and wrapped.planted_config == 0
