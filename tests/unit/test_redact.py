"""Repository URLs with credentials never reach a message, a log or a report line (issue 13,
point 7): ``gitsource.redact`` and the places that apply it."""

from __future__ import annotations

import subprocess

import pytest
from ansible.module_utils import gitsource
from ansible.module_utils.gitsource import GitSourceError, SourceUnreachable, redact
from ansible.module_utils.report import document, failures, rows, table

SECRET = "ghp_canaryREDACT0123456789"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"https://user:{SECRET}@github.com/o/r.git", "https://***@github.com/o/r.git"),
        (f"https://{SECRET}@github.com/o/r", "https://***@github.com/o/r"),
        (f"https://user:p@ss{SECRET}@host/r", "https://***@host/r"),  # an @ in the password
        (f"x ssh://git:{SECRET}@host:22/r y", "x ssh://***@host:22/r y"),
        (
            f"https://host/r.git?private_token={SECRET}&a=1",
            "https://host/r.git?private_token=***&a=1",
        ),
        ("https://host/a@b", "https://host/a@b"),  # an @ in the path stays
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),  # scp form: no secret in it
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected


def test_errors_of_source_locking_hold_no_credentials(tmp_path):
    url = f"https://user:{SECRET}@127.0.0.1:9/none.git"  # nothing listens: the fetch fails
    with pytest.raises(SourceUnreachable) as caught:
        gitsource.follow(url, "v*", "comfyui.follow", timeout=5)
    assert SECRET not in str(caught.value) and "***@127.0.0.1:9" in str(caught.value)
    with pytest.raises(GitSourceError) as caught:
        gitsource.ensure_commit(tmp_path, url, "0" * 40, "comfyui.ref", timeout=5)
    assert SECRET not in str(caught.value)


def test_git_stderr_with_the_url_is_redacted():
    done = subprocess.CompletedProcess(
        [], 128, "", f"fatal: unable to access 'https://u:{SECRET}@h/'"
    )
    assert SECRET not in gitsource._why(done, "x")


def test_report_lines_hold_no_credentials():
    reason = f"comfyui: cannot fetch https://u:{SECRET}@host/r.git (timeout)"
    nodes = [
        {"name": "os", "kind": "os-base", "status": "external"},
        {"name": "base", "kind": "base-common", "status": "skipped", "reason": reason},
        {"name": "app", "kind": "template", "status": "planned"},
    ]
    build = {"app": {"status": "failed", "reason": reason, "cause": [f"git clone {reason}"]}}
    report = rows(nodes, build, {}, {})
    text = "\n".join([*failures(report), table(report), repr(document(report, {}))])
    assert SECRET not in text
    assert "***@host" in text
