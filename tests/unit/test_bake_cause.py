"""bake_run.failure_cause: the failing step of a BuildKit plain log and its last lines.

The samples follow what ``docker buildx build --progress=plain`` prints (buildx 0.13,
BuildKit 0.12 and 0.8): steps ``#N [stage i/n] CMD``, their output ``#N <seconds> <text>``,
``#N ERROR: ...`` for the failing step, then a summary block that repeats the output.
"""

from __future__ import annotations

from pathlib import Path

from ansible.module_utils.bake_run import Baker, failure_cause

INSTALL = (
    "RUN --mount=type=secret,id=ca PIP_CERT=/run/secrets/ca python /opt/aiclipse/"
    "install_nodes.py /opt/aiclipse/nodes_manifest.lock"
)
PLAIN_LOG = f"""\
#0 building with "default" instance using docker driver

#1 [internal] load build definition from Dockerfile
#1 transferring dockerfile: 1.31kB done
#1 DONE 0.0s

#2 [internal] load metadata for 127.0.0.1:5000/aiclipse/comfyui:base-cpu-0123456789ab
#2 DONE 0.1s

#3 [internal] load .dockerignore
#3 transferring context: 2B done
#3 DONE 0.0s

#4 [tiny-cpu 1/5] FROM 127.0.0.1:5000/aiclipse/comfyui:base-cpu-0123456789ab
#4 CACHED

#5 [internal] load build context
#5 transferring context: 4.12kB done
#5 DONE 0.0s

#6 [tiny-cpu 2/5] COPY nodes_manifest.lock /opt/aiclipse/nodes_manifest.lock
#6 DONE 0.1s

#7 [tiny-cpu 3/5] {INSTALL}
#7 0.412 install_nodes: ComfyUI-Impact-Pack: cloning https://user:tok@github.com/x/y at 1f2e
#7 1.873 install_nodes: ComfyUI-Impact-Pack: installing requirements.txt
#7 2.105 Collecting segment-anything (from -r requirements.txt (line 3))
#7 2.106   Downloading segment_anything-1.0-py3-none-any.whl (36 kB)
#7 2.310      ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 36.6/36.6 kB 3.1 MB/s eta 0:00:00
#7 2.950 ERROR: Could not find a version that satisfies the requirement ultralytics==99 \
(from versions: 8.0.1, 8.3.2)
#7 2.951 ERROR: No matching distribution found for ultralytics==99
#7 3.012
#7 3.020 install_nodes: ComfyUI-Impact-Pack: pip install -r requirements.txt failed (exit 1)
#7 ERROR: process "/bin/sh -c python /opt/aiclipse/install_nodes.py \
/opt/aiclipse/nodes_manifest.lock" did not complete successfully: exit code: 1

#8 [tiny-cpu 4/5] COPY workflows /opt/aiclipse/workflows
#8 CANCELED
------
 > [tiny-cpu 3/5] {INSTALL}:
2.950 ERROR: Could not find a version that satisfies the requirement ultralytics==99
2.951 ERROR: No matching distribution found for ultralytics==99
3.020 install_nodes: ComfyUI-Impact-Pack: pip install -r requirements.txt failed (exit 1)
------
Dockerfile:21
--------------------
  20 |     # custom nodes, pinned (install_nodes.py reads the lock)
  21 | >>> {INSTALL}
  22 |
--------------------
ERROR: failed to solve: process "/bin/sh -c python /opt/aiclipse/install_nodes.py \
/opt/aiclipse/nodes_manifest.lock" did not complete successfully: exit code: 1
"""

# BuildKit 0.8 (docker 20.10's builder): the same shape, "executor failed running [...]".
OLD_LOG = """\
#9 [base-cpu 4/6] RUN /opt/venv/bin/pip install --no-deps -r /tmp/layers/torch.txt
#9 0.871 Looking in indexes: https://pypi.org/simple
#9 61.02 WARNING: Retrying (Retry(total=0)) after connection broken by 'ReadTimeoutError'
#9 92.40 ERROR: Could not install packages due to an OSError: HTTPSConnectionPool(\
host='download.pytorch.org', port=443): Max retries exceeded with url: /whl/torch.whl
#9 ERROR: executor failed running [/bin/sh -c /opt/venv/bin/pip install --no-deps -r \
/tmp/layers/torch.txt]: exit code: 1
------
 > [base-cpu 4/6] RUN /opt/venv/bin/pip install --no-deps -r /tmp/layers/torch.txt:
------
error: failed to solve: rpc error: code = Unknown desc = executor failed running [/bin/sh -c \
/opt/venv/bin/pip install --no-deps -r /tmp/layers/torch.txt]: exit code: 1
"""


def test_the_failing_step_and_its_last_lines_name_the_node():
    cause = failure_cause(PLAIN_LOG)
    assert cause is not None
    assert cause.reason.startswith("[tiny-cpu 3/5] RUN --mount=type=secret,id=ca")
    assert cause.reason.endswith(
        "failed (exit code 1): install_nodes: ComfyUI-Impact-Pack: pip install -r "
        "requirements.txt failed (exit 1)"
    ), cause.reason
    assert cause.lines[-1].startswith("install_nodes: ComfyUI-Impact-Pack: pip install")
    assert "ERROR: No matching distribution found for ultralytics==99" in cause.lines
    # timestamps, blank lines and progress bars are dropped; credentials are masked
    assert not any(line.startswith(("#7", "2.")) or "━" in line for line in cause.lines)
    assert cause.lines[0] == (
        "install_nodes: ComfyUI-Impact-Pack: cloning https://***@github.com/x/y at 1f2e"
    )
    assert len(cause.lines) == 7  # nine output lines less the progress bar and the blank


def test_buildkit_0_8_executor_failed_is_read_the_same_way():
    cause = failure_cause(OLD_LOG)
    assert cause is not None
    assert cause.reason.startswith("[base-cpu 4/6] RUN /opt/venv/bin/pip install")
    assert "failed (exit code 1): ERROR: Could not install packages" in cause.reason
    assert "download.pytorch.org" in cause.reason


def test_a_step_that_fails_without_output_gives_buildkits_error():
    log = (
        "#6 [tiny-cpu 2/5] COPY missing.txt /opt/\n"
        '#6 ERROR: failed to calculate checksum of ref abc::def: "/missing.txt": not found\n'
    )
    cause = failure_cause(log)
    assert cause is not None and cause.lines == []
    assert cause.reason == (
        "[tiny-cpu 2/5] COPY missing.txt /opt/: failed to calculate checksum of ref abc::def: "
        '"/missing.txt": not found'
    )


def test_a_killed_build_names_the_step_that_was_running():
    log = PLAIN_LOG.split("#7 2.950")[0]  # killed while pip was collecting
    cause = failure_cause(log, timed_out=True)
    assert cause is not None
    assert cause.reason.startswith("[tiny-cpu 3/5] RUN")
    assert cause.reason.endswith(
        "did not finish: Downloading segment_anything-1.0-py3-none-any.whl (36 kB)"
    )
    assert failure_cause("ERROR: failed to read bake file\n") is None


def test_a_failed_target_carries_the_cause_in_its_outcome(tmp_path: Path):
    bake = {
        "group": {"level3": {"targets": ["tiny-cpu"]}},
        "target": {"tiny-cpu": {"tags": ["r/c:tiny-cpu-h"], "labels": {}}},
    }

    def runner(argv, log: Path, timeout: float) -> int:
        log.write_text(PLAIN_LOG)
        return 1

    out = Baker("bake.json", bake, tmp_path, runner=runner).run().as_dict()
    item = out["outcomes"]["tiny-cpu"]
    assert item["status"] == "failed"
    assert "install_nodes: ComfyUI-Impact-Pack: pip install" in item["reason"]
    assert item["cause"][-1].startswith("install_nodes: ComfyUI-Impact-Pack")
    assert item["tail"][-1].startswith("ERROR: failed to solve: process")  # the raw tail stays
