"""ops/notify.py: apprise delivery to a real HTTP endpoint on loopback, once per condition, secrets never named."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from cermin.ops.notify import Event, Notifier, read_urls, url_name


@pytest.fixture
def hook():
    got: list[dict] = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            n = int(self.headers.get("Content-Length", 0))
            got.append({"path": self.path, "body": json.loads(self.rfile.read(n))})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"json://127.0.0.1:{srv.server_port}/hook/SECRET-TOKEN", got
    srv.shutdown()


def test_events_are_delivered_once_per_condition_and_recovery_once(hook):
    url, got = hook
    n = Notifier([url])
    breach = Event("rpo_breach", "imigrasi/paspor", "cermin: imigrasi/paspor breaches its RPO", "last backup 3h ago")
    assert n.update([breach]) == [breach]
    assert n.update([breach]) == []  # still open: no second message
    rec = n.update([])
    assert len(rec) == 1 and not rec[0].failure and "recovered" in rec[0].title
    assert n.update([]) == []
    assert [g["body"]["title"] for g in got] == [breach.title, rec[0].title]
    assert got[0]["body"]["type"] == "failure" and got[1]["body"]["type"] == "success"
    assert got[0]["path"] == "/hook/SECRET-TOKEN"


def test_unchecked_systems_are_not_declared_recovered(hook):
    url, got = hook
    n = Notifier([url])
    a, b = Event("run_failed", "t/a", "a failed", "x"), Event("run_failed", "t/b", "b failed", "y")
    n.update([a, b])
    assert n.update([a], checked=[a.key]) == []  # b was not evaluated this round: still open
    assert [e.system for e in n.update([], checked=[b.key])] == ["t/b"]


def test_failing_url_does_not_raise_and_secrets_stay_out_of_names(hook):
    url, got = hook
    n = Notifier(["json://127.0.0.1:9/x?token=SECRET", url], tenant_urls={"t": [url]})
    failed = n.send(Event("guard_alarm", "t/s", "alarm", "body"))
    assert failed == ["json://127.0.0.1"]
    assert len(got) == 2  # the fleet's URL and the tenant's own
    assert all("SECRET" not in name for _, name, _ in n.sent)
    assert url_name("mailtos://user:pass@smtp.example/?to=x") == "mailtos://smtp.example"


def test_read_urls(tmp_path):
    f = tmp_path / "u"
    f.write_text("# fleet\njson://127.0.0.1:1/a\n\n  json://127.0.0.1:2/b  \n")
    assert read_urls(str(f)) == ["json://127.0.0.1:1/a", "json://127.0.0.1:2/b"]
    assert read_urls(env="N", environ={"N": "json://h/a, json://h/b"}) == ["json://h/a", "json://h/b"]
    assert read_urls() == []
