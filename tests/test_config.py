"""ops/config.py: the agent's TOML — the documented example resolves, and every error names file, line and key."""

from __future__ import annotations

import json
import os

import pytest

from cermin.ops.config import ConfigError, fmt_duration, load_config, parse_config, parse_duration

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "cermin.toml")


def _text() -> str:
    with open(EXAMPLE, encoding="utf-8") as f:
        return f.read()


def test_documented_example_resolves():
    cfg = load_config(EXAMPLE, environ={})
    by_id = {s.id: s for s in cfg.systems}
    assert set(by_id) == {"imigrasi/paspor", "dukcapil/antrian", "perpustakaan/arsip"}
    paspor = by_id["imigrasi/paspor"]
    assert paspor.policy.name == "strategis" and paspor.policy.rpo == 3600 and paspor.policy.rto == 4 * 3600
    assert paspor.copies == {"primary": "dc-imigrasi", "immutable": "dc-imigrasi-locked", "mirror": "imigrasi-own"}
    assert paspor.interval == 1800 and not paspor.schedule  # half the RPO
    assert by_id["dukcapil/antrian"].schedule == "0 */2 * * *" and by_id["dukcapil/antrian"].interval == 0
    assert [s.type for s in by_id["dukcapil/antrian"].sources] == ["sqlite", "paths"]
    assert by_id["perpustakaan/arsip"].hostname == "perpustakaan.arsip"
    assert cfg.system("paspor") is paspor and cfg.system("imigrasi/paspor") is paspor
    with pytest.raises(ConfigError, match="not in"):
        cfg.system("nope")


@pytest.mark.parametrize(
    "old,new,where,message",
    [
        ('class = "rendah"', 'class = "rendahh"', "104: tenants.perpustakaan.systems.arsip.class", "unknown class"),
        (
            'user = "backup"',
            'user = "backup"\npassword = "hunter2"',
            "64: tenants.imigrasi.systems.paspor.sources[0].password",
            "secrets do not belong",
        ),
        ("min_files = 1", 'min_files = "x"', "113: tenants.perpustakaan.systems.arsip.checks[0].min_files", "int"),
        (
            "min_files = 1",
            "min_filez = 1",
            "113: tenants.perpustakaan.systems.arsip.checks[0].min_filez",
            "unknown key",
        ),
        ('rpo = "1h"', 'rpo = "1m"', "12: classes.strategis.rpo", "ambiguous"),
        ('schedule = "0 */2 * * *"', 'schedule = "0 */2 * *"', "79: tenants.dukcapil.systems.antrian.schedule", "cron"),
        ('mirror = "imigrasi-own"\n', "", "52: tenants.imigrasi.systems.paspor:", "requires a mirror copy"),
        ("port = 5432", "port = 99999", "62: tenants.imigrasi.systems.paspor.sources[0].port", "not a port"),
        (
            'url = "/srv/cermin/dukcapil"',
            'url = "s3:http://ak:sk@127.0.0.1:8333/b"',
            "36: repositories.dc-dukcapil.url",
            "credentials",
        ),
        (
            'primary = "dc-perpustakaan"',
            'primary = "dc-nowhere"',
            "105: tenants.perpustakaan.systems.arsip.primary",
            "unknown repository",
        ),
        (
            'query = "SELECT 1 FROM tickets LIMIT 1"',
            'query = " "',
            "94: tenants.dukcapil.systems.antrian.checks[0].query",
            "query",
        ),
    ],
)
def test_errors_name_file_line_and_key(old, new, where, message):
    text = _text()
    assert old in text
    with pytest.raises(ConfigError) as e:
        parse_config(text.replace(old, new, 1).encode(), "cermin.toml", {})
    assert str(e.value).startswith(f"cermin.toml:{where}"), str(e.value)
    assert message in str(e.value)


def test_syntax_error_and_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^x.toml: .*line 1"):
        parse_config(b"[tenants\n", "x.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_config(b"\xff\xfe", "x.toml")


def test_user_class_and_defaults():
    text = _text() + '\n[classes.arsip-negara]\nrpo = "12h"\nrto = "3d"\nretention = { yearly = 10 }\n'
    text = text.replace('class = "rendah"', 'class = "arsip-negara"')
    cfg = parse_config(text.encode(), "c.toml", {})
    arsip = cfg.system("arsip")
    assert arsip.policy.name == "arsip-negara" and arsip.policy.copies == ("primary",) and arsip.interval == 6 * 3600
    assert set(cfg.classes) >= {"strategis", "tinggi", "rendah", "arsip-negara"}


def test_durations():
    assert parse_duration("1h30min") == 5400 and parse_duration("2w") == 14 * 86400 and parse_duration("90s") == 90
    for bad in ("", "1m", "h", "1h 2min", "0h", "-1h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert fmt_duration(3600) == "1h" and fmt_duration(5400) == "1h30min" and fmt_duration(7 * 86400) == "1w"
    assert fmt_duration(30 * 86400) == "30d" and fmt_duration(90061) == "1d1h1min1s"


def test_config_check_prints_the_plan(cli):
    r = cli("config", "check", "-c", EXAMPLE, text=True)
    assert "valid — 3 tenant(s), 3 system(s)" in r.stdout
    assert "imigrasi/paspor  class strategis (RPO 1h, RTO 4h)" in r.stdout
    assert "then mirrored to dc-imigrasi-locked, imigrasi-own" in r.stdout
    assert "cron '0 */2 * * *'" in r.stdout and "every 30min" in r.stdout
    j = cli("--json", "config", "check", "-c", EXAMPLE, text=True)
    plan = json.loads(j.stdout.splitlines()[0])
    assert plan["message_type"] == "config_plan" and len(plan["systems"]) == 3
    bad = cli("config", "check", "-c", "/nonexistent.toml", ok=False, text=True)
    assert bad.returncode == 2 and "cannot read the configuration" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "url",
    ["postgresql+psycopg://u@h/db?password=secret", "postgresql://u:p/ss@h/db", "postgres://a:b@h:5432/x"],
)
def test_state_urls_with_a_password_in_any_spelling_are_refused(url):
    text = _text().replace("[agent]\n", f'[agent]\nstate = "{url}"\n', 1)
    with pytest.raises(ConfigError, match="holds a password"):
        parse_config(text.encode(), "c.toml", {})


def test_durations_are_bounded():
    with pytest.raises(ValueError, match="ten years"):
        parse_duration("9999w")
    with pytest.raises(ValueError):
        parse_duration("99999999999999w")
    text = _text().replace('drill_every = "7d"', 'drill_every = "9999w"', 1)
    with pytest.raises(ConfigError, match="ten years"):
        parse_config(text.encode(), "c.toml", {})
