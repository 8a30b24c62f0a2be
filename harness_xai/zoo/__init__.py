"""The zoo: small models the project trains itself on its bundled tasks (offline, seeded, cached).

``build_model(zoo_dir)`` → ``zoo_dir/llama-tiny`` (a normal Hugging Face directory);
``tasks_dir()`` → the bundled lm-eval task directory (``--include_path``).
"""

from __future__ import annotations

from pathlib import Path

from harness_xai.errors import UserError
from harness_xai.zoo.build import DEMO_MODEL, DEMO_STEPS, build_model

DEMO_TASKS = ("xai_kv", "xai_arith", "xai_kv_gen")

__all__ = ["DEMO_MODEL", "DEMO_STEPS", "DEMO_TASKS", "build_model", "tasks_dir"]


def tasks_dir() -> Path:
    """``tasks/`` of this source checkout (the bundled task YAMLs and data)."""
    path = Path(__file__).resolve().parents[2] / "tasks"
    if not (path / "xai_kv").is_dir():
        raise UserError(f"bundled tasks not found at {path}: run from a source checkout of "
                        "harness-xai (git clone), or pass your own --include_path.")
    return path
