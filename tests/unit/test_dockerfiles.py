"""The Dockerfile templates render what the runtime expects (start.sh's paths, tini -g, the
constraints file, UID 1000) and keep the CA bundle a BuildKit secret. The docker tier builds
them without JupyterLab (slow through PyPI); its rendering is checked here."""

from __future__ import annotations

import re
from pathlib import Path

from ansible.module_utils.graph import APT_PACKAGES, _environment

REPO = Path(__file__).resolve().parents[2]
ENV = _environment(REPO)


def base_common(**overrides) -> str:
    values = {
        "apt_packages": APT_PACKAGES,
        "user": "comfy",
        "uid": 1000,
        "gid": 1000,
        "jupyter_spec": "jupyterlab==4.4.10",
        "filebrowser_url": "",
        "filebrowser_sha256": "",
        **overrides,
    }
    return ENV.get_template("Dockerfile.base-common.j2").render(**values)


def test_jupyter_lab_is_where_start_sh_looks_for_it():
    text = base_common()
    assert "/opt/jupyter/bin/pip install --only-binary=:all: jupyterlab==4.4.10" in text
    # start.sh: lab="$(dirname "$PYTHON")/jupyter-lab" with PYTHON=/opt/venv/bin/python
    assert "ln -s /opt/jupyter/bin/jupyter-lab /opt/venv/bin/jupyter-lab" in text
    assert "jupyter" not in base_common(jupyter_spec="")


def test_runtime_scripts_last_under_tini_g_as_start_sh_expects():
    text = base_common()
    copies = [line for line in text.splitlines() if line.startswith(("COPY", "RUN"))]
    assert copies[-1] == "COPY runtime/ /opt/aiclipse/runtime/"
    assert 'ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/opt/aiclipse/runtime/start.sh"]' in text
    assert "useradd --uid 1000 --gid 1000" in text
    assert 'test "$(git -C /opt/ComfyUI rev-parse HEAD)" = "$COMFYUI_COMMIT"' in text


def test_the_ca_bundle_is_only_ever_a_secret_mount():
    texts = [base_common(filebrowser_url="http://127.0.0.1/fb.tgz", filebrowser_sha256="ab")]
    texts.append(
        ENV.get_template("Dockerfile.base-gpu.j2").render(
            gpu="cpu",
            layers=[
                {
                    "name": "torch",
                    "file": "01-torch.txt",
                    "count": 2,
                    "wheels": "01-torch",
                    "index_options": "--find-links /ctx/wheels --no-index",
                }
            ],
            copy_link=False,
            arch_list="",
        )
    )
    texts.append(
        ENV.get_template("Dockerfile.template.j2").render(
            template="t", gpu="cpu", fragment="", nodes=1, comfy_args="--cpu"
        )
    )
    for text in texts:
        assert "ca-certificates.crt" not in text
        assert not re.search(r"^(ARG|ENV|LABEL)\b.*\bca\b", text, re.M | re.I)
        for line in text.splitlines():
            if "/run/secrets/ca" in line and line.lstrip().startswith("RUN"):
                assert "--mount=type=secret,id=ca" in line
    gpu, template = texts[1], texts[2]
    assert "--no-deps --no-compile --require-hashes" in gpu
    assert "COPY --from=layer-torch /layer/ /opt/venv/" in gpu
    assert "COPY constraints.txt /opt/aiclipse/constraints.txt" in gpu
    assert "PIP_CONSTRAINT=/opt/aiclipse/constraints.txt" in gpu
    assert "/opt/aiclipse/runtime/install_nodes.py --manifest /manifests/nodes.lock" in template


def test_a_template_without_nodes_runs_no_node_install():
    text = ENV.get_template("Dockerfile.template.j2").render(
        template="t", gpu="cpu", fragment="", nodes=0, comfy_args="--cpu"
    )
    assert "install_nodes.py" not in text
    assert "COPY workflows/ /opt/workflows/" in text
