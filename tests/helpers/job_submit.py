"""docs/deploy.md's ``ray job submit`` command, read from the page and pointed at a test's head and files.

Used by tests/integration/test_ray_job_submit.py and tests/integration/test_multinode.py, so that the
command the documentation shows is the one that runs.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # tests/helpers/ -> repo root
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

__all__ = ["documented_submit_command", "replace_set", "replace_value"]


def documented_submit_command() -> list[str]:
    """docs/deploy.md's ``ray job submit ... --runtime-env infra/ray/runtime_env.yaml`` command, as argv."""
    doc = DEPLOY_DOC.read_text()
    for block in re.findall(r"```bash\n(.*?)```", doc, flags=re.S):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("ray job submit") and "--runtime-env infra/ray/runtime_env.yaml" in line:
                text = line
                while text.endswith("\\"):
                    i += 1
                    text = text[:-1] + " " + lines[i].strip()
                return shlex.split(text)
    raise AssertionError("docs/deploy.md has no `ray job submit ... --runtime-env infra/ray/runtime_env.yaml` command")


def replace_value(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with the value after ``flag`` replaced."""
    i = argv.index(flag)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


def replace_set(argv: list[str], key: str, value: str) -> list[str]:
    """``argv`` with the first ``--set key=...`` replaced by ``--set key=value``; the command must set it."""
    out = list(argv)
    hits = [i for i, a in enumerate(out) if a.startswith(f"{key}=") and out[i - 1] == "--set"]
    assert hits, f"the documented command sets no {key}"
    out[hits[0]] = f"{key}={value}"
    return out
