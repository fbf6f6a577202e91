"""Shared pytest setup: make the repo's module_utils importable the way Ansible does.

Modules and module_utils import each other as ``ansible.module_utils.<name>``; Ansible's
module loader resolves that against ``ansible.cfg``'s ``module_utils`` folder. Here we extend
the package path so the same import lines work under plain pytest.
"""

from __future__ import annotations

import sys
from pathlib import Path

import ansible.module_utils

REPO = Path(__file__).resolve().parent.parent
ansible.module_utils.__path__.append(str(REPO / "module_utils"))
for extra in (REPO / "tests", REPO / "runtime", REPO / "library", REPO / "filter_plugins"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))
