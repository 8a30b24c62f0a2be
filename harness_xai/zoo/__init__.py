"""The zoo: small models the project trains itself on its bundled tasks (offline, seeded, cached).

``build_zoo(zoo_dir)`` → ``{name: zoo_dir/name}`` for the family ``llama``/``neox`` ×
``s``/``m``/``l``, each a Hugging Face directory (the final model) with one ``step<N>/``
subdirectory per checkpoint;
``build_model(zoo_dir)`` → ``zoo_dir/llama-tiny`` (the single model of the first demo);
``build.build_steps_model(zoo_dir)`` → ``zoo_dir/llama-steps``, the model of ``xai_steps``
(multi-step arithmetic written out; not in the demo zoo: the localiser bench and tests build it);
``tasks_dir()`` → the bundled lm-eval task directory (``--include_path``).
"""

from __future__ import annotations

from pathlib import Path

from harness_xai.errors import UserError
from harness_xai.zoo.build import DEMO_MODEL, DEMO_STEPS, build_model, build_zoo
from harness_xai.zoo.family import ZOO_MODELS

DEMO_TASKS = ("xai_kv", "xai_arith", "xai_kv_gen")
#: the demo: every zoo model × DEMO_CHECKPOINTS on the first DEMO_LIMIT docs of each task, then the
#: main model's final checkpoint on every doc with graphs and faithfulness (the zoo saves more
#: checkpoints; these four keep `make demo` within 10 minutes on 2 cores)
DEMO_CHECKPOINTS = "0,200,300,540"
DEMO_LIMIT = 40
DEMO_MAIN = "llama-l"

__all__ = ["DEMO_CHECKPOINTS", "DEMO_LIMIT", "DEMO_MAIN", "DEMO_MODEL", "DEMO_STEPS", "DEMO_TASKS",
           "ZOO_MODELS", "build_model", "build_zoo", "tasks_dir"]


def tasks_dir() -> Path:
    """``tasks/`` of this source checkout (the bundled task YAMLs and data)."""
    path = Path(__file__).resolve().parents[2] / "tasks"
    if not (path / "xai_kv").is_dir():
        raise UserError(f"bundled tasks not found at {path}: run from a source checkout of "
                        "harness-xai (git clone), or pass your own --include_path.")
    return path
