"""examples/github-actions/nightly.yml: the CI schedule for users whose control node is CI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "examples" / "github-actions" / "nightly.yml"
SECRETS = ("AICLIPSE_REGISTRY_USERNAME", "AICLIPSE_REGISTRY_PASSWORD")
CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\d+(-\d+)?))*$")


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def nightly_step(workflow: dict) -> dict:
    runs = [s for s in steps(workflow) if "nightly.yml" in s.get("run", "")]
    assert len(runs) == 1, "exactly one step runs nightly.yml"
    return runs[0]


def test_it_runs_on_a_schedule_and_by_hand(workflow):
    triggers = workflow["on"]  # quoted in the file: YAML 1.1 would read a bare `on` as true
    crons = [entry["cron"] for entry in triggers["schedule"]]
    assert len(crons) == 1
    fields = crons[0].split()
    assert len(fields) == 5 and all(CRON_FIELD.match(field) for field in fields), crons[0]
    assert "workflow_dispatch" in triggers


def test_two_runs_never_overlap_and_none_is_cancelled(workflow):
    concurrency = workflow["concurrency"]
    assert concurrency["group"]
    assert concurrency["cancel-in-progress"] is False


def test_it_runs_nightly_yml_from_the_venv_with_an_inventory(workflow):
    setup = " ".join(s.get("run", "") for s in steps(workflow))
    assert "python3 -m venv .venv" in setup and "-r requirements.txt" in setup
    run = nightly_step(workflow)["run"]
    assert re.search(r"\.venv/bin/ansible-playbook -i \S+ nightly\.yml", run), run
    job_env = next(iter(workflow["jobs"].values()))["env"]
    assert job_env["ANSIBLE_CONFIG"].endswith("/ansible.cfg")


def test_the_registry_secrets_reach_only_the_nightly_step_and_are_never_printed(workflow):
    text = WORKFLOW.read_text()
    env = nightly_step(workflow)["env"]
    for name in SECRETS:
        assert env[name] == f"${{{{ secrets.{name} }}}}"
        assert text.count(f"secrets.{name}") == 1  # in that step's env only
    assert "secrets" not in str(workflow.get("env", {}))
    for job in workflow["jobs"].values():
        assert "secrets" not in str(job.get("env", {}))
    for step in steps(workflow):
        run = step.get("run", "")
        assert "secrets." not in run  # never expanded into a script
        assert "set -x" not in run
        for line in run.splitlines():
            if re.search(r"\b(echo|printf|cat|env|printenv)\b", line):
                assert not any(name in line for name in SECRETS), line


def test_the_report_is_kept_even_when_the_night_failed(workflow):
    uploads = [
        s for s in steps(workflow) if s.get("uses", "").startswith("actions/upload-artifact")
    ]
    assert len(uploads) == 1
    assert uploads[0]["if"].startswith("always()")
    path = uploads[0]["with"]["path"]
    finder = [s for s in steps(workflow) if "reports/latest" in s.get("run", "")]
    assert "reports/latest" in path or (finder and finder[0]["id"] in path)
