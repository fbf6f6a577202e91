"""Verify the nightly schedule on this control node (testinfra, through molecule's inventory).

The cron schedule is the one this machine runs; the systemd one is rendered into a scratch
folder and checked with ``systemd-analyze verify``. The last tests run the wrapper exactly as
cron would (cron's bare environment): a nightly against the registry prepare.yml filled, which
must build nothing and push 0 bytes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

SCENARIO = Path(__file__).resolve().parents[1]
PROJECT = SCENARIO.parents[1]
V = yaml.safe_load((SCENARIO / "vars" / "main.yml").read_text())
ROOT = V["molecule_nightly_root"]
CRON_NAME = V["molecule_nightly_name"]
UNITS_NAME = V["molecule_nightly_units_name"]
UNIT_DIR = f"{ROOT}/units"
WRAPPER = f"/usr/local/libexec/{CRON_NAME}"
LOG = f"{ROOT}/log/nightly.log"
CANARY = V["molecule_nightly_canary"]
HHMM = f"{V['molecule_nightly_hour']:02d}:{V['molecule_nightly_minute']:02d}"
# What cron gives a job (crontab(5)): nothing of the shell or of molecule's environment.
CRON_ENV = "env -i HOME=/root LOGNAME=root SHELL=/bin/sh PATH=/usr/bin:/bin"
# The build step's table rows (as tests/docker/test_build.py reads them).
ROW = re.compile(r"^\s*-?\s*\"?(built|cached|failed|skipped|planned)\s+(\S+)", re.M)


def test_cron_file_runs_the_wrapper_at_the_configured_time(host):
    cron = host.file(f"/etc/cron.d/{CRON_NAME}")
    assert cron.exists and cron.user == "root" and cron.mode == 0o644
    jobs = [line for line in cron.content_string.splitlines() if line and line[0] != "#"]
    minute, hour = V["molecule_nightly_minute"], V["molecule_nightly_hour"]
    assert jobs == [f"{minute} {hour} * * * root nice -n {V['molecule_nightly_nice']} {WRAPPER}"]


def test_cron_daemon_runs(host):
    assert host.run("pgrep -x cron").rc == 0


def test_the_cron_schedule_has_no_units_and_the_units_schedule_no_cron_file(host):
    assert not host.file(f"/etc/systemd/system/{CRON_NAME}.timer").exists
    assert not host.file(f"/etc/systemd/system/{CRON_NAME}.service").exists
    assert not host.file(f"/etc/cron.d/{UNITS_NAME}").exists


@pytest.mark.parametrize("name", [CRON_NAME, UNITS_NAME])
def test_wrapper_is_executable_and_shellcheck_clean(host, name):
    wrapper = host.file(f"/usr/local/libexec/{name}")
    assert wrapper.exists and wrapper.user == "root" and wrapper.mode == 0o755
    check = host.run(f"shellcheck --severity=style /usr/local/libexec/{name}")
    assert check.rc == 0, check.stdout
    text = wrapper.content_string
    assert "set -euo pipefail" in text
    assert f"readonly PLAYBOOK={PROJECT}/nightly.yml" in text
    assert f"readonly INVENTORY={PROJECT}/inventory/local" in text
    assert f"readonly VARS_FILE=/etc/aiclipse/{name}.vars.yml" in text


@pytest.mark.parametrize("name", [CRON_NAME, UNITS_NAME])
def test_vars_file_is_0600_root_and_holds_the_extra_vars(host, name):
    extra = host.file(f"/etc/aiclipse/{name}.vars.yml")
    assert extra.exists and extra.user == "root" and extra.mode == 0o600
    expected = json.loads(host.file(f"{ROOT}/build-vars.json").content_string)
    assert yaml.safe_load(extra.content_string) == expected


@pytest.mark.parametrize(("name", "expected"), [(CRON_NAME, CANARY), (UNITS_NAME, "")])
def test_env_file_is_0600_root_and_exports_the_value_unchanged(host, name, expected):
    env = host.file(f"/etc/aiclipse/{name}.env")
    assert env.exists and env.user == "root" and env.mode == 0o600
    script = f'set -a; . /etc/aiclipse/{name}.env; printf %s "$AICLIPSE_MOLECULE_CANARY"'
    value = host.run("env -i bash -c %s", script)
    assert value.rc == 0 and value.stdout == expected, value.stderr
    text = host.file(f"/usr/local/libexec/{name}").content_string
    assert f"readonly ENV_FILE=/etc/aiclipse/{name}.env" in text


def test_systemd_units_pass_systemd_analyze_verify(host):
    units = f"{UNIT_DIR}/{UNITS_NAME}.service {UNIT_DIR}/{UNITS_NAME}.timer"
    check = host.run(f"systemd-analyze verify {units}")
    output = check.stdout + check.stderr
    # Without a running systemd, warnings about the machine may appear; none may name our units.
    ours = [line for line in output.splitlines() if UNITS_NAME in line or UNIT_DIR in line]
    assert ours == [] and check.rc == 0, output


def test_systemd_units_are_as_configured(host):
    service = host.file(f"{UNIT_DIR}/{UNITS_NAME}.service").content_string.splitlines()
    for line in (
        "Type=oneshot",
        "User=root",
        f"Nice={V['molecule_nightly_nice']}",
        "TimeoutStartSec=12h",
        f"ExecStart=/usr/local/libexec/{UNITS_NAME}",
    ):
        assert line in service
    timer = host.file(f"{UNIT_DIR}/{UNITS_NAME}.timer").content_string.splitlines()
    for line in (
        f"OnCalendar=*-*-* {HHMM}:00",
        "Persistent=true",
        f"RandomizedDelaySec={V['molecule_nightly_delay']}",
        f"Unit={UNITS_NAME}.service",
        "WantedBy=timers.target",
    ):
        assert line in timer
    calendar = host.run(f"systemd-analyze calendar '*-*-* {HHMM}:00'")
    assert calendar.rc == 0 and f"Normalized form: *-*-* {HHMM}:00" in calendar.stdout


@pytest.mark.parametrize(
    ("name", "log", "period"),
    [(CRON_NAME, LOG, "weekly"), (UNITS_NAME, f"{ROOT}/log/nightly-units.log", "daily")],
)
def test_logrotate_accepts_the_config(host, name, log, period):
    config = host.file(f"/etc/logrotate.d/{name}")
    assert config.exists and config.user == "root" and config.mode == 0o644
    lines = [line.strip() for line in config.content_string.splitlines()]
    assert f"{log} {{" in lines
    for line in (period, f"rotate {V['molecule_nightly_rotate_count']}", "compress", "missingok"):
        assert line in lines
    check = host.run(f"logrotate -d /etc/logrotate.d/{name}")
    assert check.rc == 0, check.stderr
    assert f"considering log {log}" in check.stderr
    assert "error" not in check.stderr.lower(), check.stderr


def test_a_run_that_finds_the_lock_held_is_skipped(host):
    lock = f"/run/lock/{CRON_NAME}.lock"
    before = host.file(LOG).content_string
    run = host.run(f"flock -n {lock} {CRON_ENV} {WRAPPER}")
    assert run.rc == 0, run.stderr
    new = host.file(LOG).content_string[len(before) :]
    assert f"{CRON_NAME}: skipped: another run holds {lock}" in new
    assert "start:" not in new


def test_running_the_wrapper_once_performs_a_noop_nightly(host):
    if not host.file(f"{PROJECT}/nightly.yml").exists:
        pytest.skip("nightly.yml not there yet")
    logs = f"{ROOT}/build/logs"
    builds_before = host.run(f"ls -1 {logs}").stdout
    before = host.file(LOG).content_string

    run = host.run(f"{CRON_ENV} {WRAPPER}")  # exactly what the cron entry runs

    new = host.file(LOG).content_string[len(before) :]
    assert run.rc == 0, f"{run.stderr}\n{new[-6000:]}"
    assert run.stdout == ""  # cron would mail anything printed
    assert len(re.findall(rf"^\S+Z {CRON_NAME}: start: ansible-playbook ", new, re.M)) == 1
    assert re.search(rf"^\S+Z {CRON_NAME}: end: exit 0$", new, re.M), new[-3000:]
    assert "bytes pushed: 0" in new, new[-6000:]
    table = new[new.rfind("Show what was built, cached, failed or skipped") :]
    statuses = {m[2]: m[1] for m in ROW.finditer(table)}
    assert statuses and set(statuses.values()) == {"cached"}, statuses
    assert host.run(f"ls -1 {logs}").stdout == builds_before  # no build ran at all
    report = json.loads(host.file(f"{ROOT}/reports/latest/report.json").content_string)
    assert report["stamp"].startswith("nightly-")
    assert report["summary"]["built"] == [] and report["summary"]["bytes_pushed"] == 0
    assert CANARY not in new  # the environment is exported, never printed
