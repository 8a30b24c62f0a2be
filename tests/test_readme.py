"""Every shell command and Python block of README.md runs as written.

The blocks run in order in a sandbox laid out like a clone after `make demo`: `tasks/` (the
repository's) and `zoo/llama-l` (the micro model of conftest, standing in for the trained zoo
model), with `harness-xai` and `python` of this environment on the PATH and this checkout on
PYTHONPATH. A block preceded by `<!-- readme-test: skip REASON — why -->` is not run: REASON is
`hub` (needs the Hugging Face Hub; such a block must name a hub model), `gpu` (needs GPUs) or
`slow` (minutes of CPU); every other block must run, must not contain an ellipsis placeholder and
must not name a hub model. SQL blocks are the store's example queries, run on every backend by
tests/test_store_sql.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SKIP = re.compile(r"^<!-- readme-test: skip (\w+) — (.+) -->$")
REASONS = {"hub", "gpu", "slow"}
HUB_MODEL = re.compile(r"\b(?:EleutherAI|meta-llama|Qwen|allenai|google|mistralai)/[\w.-]+")


def blocks() -> list[dict]:
    """Fenced ```bash / ```python blocks of the README with their skip marker (or None)."""
    lines = README.read_text("utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(bash|python)\s*$", lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while not lines[j].startswith("```"):
            j += 1
        marker = SKIP.match(lines[i - 1]) if i > 0 else None
        out.append({"lang": m.group(1), "code": "\n".join(lines[i + 1:j]) + "\n", "line": i + 1,
                    "skip": marker.group(1) if marker else None,
                    "why": marker.group(2) if marker else None})
        i = j + 1
    return out


def test_blocks_are_runnable_or_marked_with_a_reason() -> None:
    found = blocks()
    assert len(found) >= 8 and {b["lang"] for b in found} == {"bash", "python"}
    for b in found:
        where = f"README.md line {b['line']}"
        if b["skip"] is None:
            assert "…" not in b["code"] and "..." not in b["code"], f"{where}: placeholder in a runnable block"
            assert not HUB_MODEL.search(b["code"]), f"{where}: a hub model in a block that is run"
            continue
        assert b["skip"] in REASONS and b["why"].strip(), where
        if b["skip"] == "hub":
            assert HUB_MODEL.search(b["code"]), f"{where}: marked hub but names no hub model"
    assert sum(b["skip"] is None for b in found) >= 3


@pytest.fixture(scope="module")
def sandbox(micro_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    (root / "tasks").symlink_to(ROOT / "tasks", target_is_directory=True)
    (root / "zoo").mkdir()
    shutil.copytree(micro_model, root / "zoo" / "llama-l")
    return root


def test_runnable_blocks_run_as_written(sandbox: Path) -> None:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    ran = 0
    for b in blocks():
        if b["skip"] is not None:
            continue
        cmd = (["bash", "-euo", "pipefail", "-c", b["code"]] if b["lang"] == "bash"
               else [sys.executable, "-c", b["code"]])
        proc = subprocess.run(cmd, cwd=sandbox, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, (f"README.md line {b['line']} failed (exit {proc.returncode}):\n"
                                      f"{b['code']}\n--- stderr ---\n{proc.stderr[-3000:]}")
        ran += 1
    assert ran >= 3
    assert (sandbox / "reports" / "out" / "index.html").is_file()  # the report the block renders
