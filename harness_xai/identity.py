"""The identity of a run, one definition for ``run`` and ``sweep``.

A run is identified by what determines its results: lm-eval's configuration (model, model args,
tasks, limit, seeds, generation settings; not batch size or device), few-shot counts, task
versions, chat settings, the lm-eval version and the attribution settings
(``RunConfig.identity``). ``run_record`` hashes it into ``runs.run_key`` (an identical second run
maps onto the same row) and stores it in ``runs.config``; ``expected`` is what a sweep cell's
command line decides of it, and ``matches`` compares that with a stored ``runs.config``.
``checkpoint_step`` reads a checkpoint's training step (``runs.step``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from harness_xai import __version__
from harness_xai.checkpoints import parse_revision
from harness_xai.config import RunConfig
from harness_xai.records import RunRecord
from harness_xai.store.names import short_model_name

#: lm-eval config entries that do not change the results
_RUN_KEY_DROP = {"batch_size", "batch_sizes", "device", "use_cache", "bootstrap_iters"}
_CHAT_KEYS = ("system_instruction", "apply_chat_template", "fewshot_as_multiturn", "samples")
STATE_FILE = "trainer_state.json"


def run_record(results: dict, lm, tasks: list[str], config: RunConfig,
               run_kwargs: dict) -> RunRecord:
    """The ``runs`` row of a finished evaluation (``results``: lm-eval's results dict)."""
    import lm_eval

    lm_config = {k: v for k, v in results.get("config", {}).items() if k not in _RUN_KEY_DROP}
    identity = {"config": lm_config, "n-shot": results.get("n-shot"), "tasks": tasks,
                "versions": results.get("versions"),
                "chat": {k: run_kwargs.get(k) for k in _CHAT_KEYS},
                **config.identity(), "lm_eval": lm_eval.__version__}
    blob = json.dumps(identity, sort_keys=True, default=str)
    model = lm.model
    model_args = lm_config.get("model_args")
    pretrained = str(getattr(lm, "pretrained", None) or model.config._name_or_path)
    subfolder = (model_args if isinstance(model_args, dict) else {}).get("subfolder")
    return RunRecord(
        run_key=hashlib.sha256(blob.encode()).hexdigest(),
        model=str(lm_config.get("model")), model_args=json.dumps(model_args, default=str)
        if not isinstance(model_args, str) else model_args,
        pretrained=pretrained,
        revision=getattr(lm, "revision", None), model_type=model.config.model_type,
        n_params=sum(p.numel() for p in model.parameters()), tasks=tasks,
        method=config.method.name, lm_eval_version=lm_eval.__version__,
        harness_xai_version=__version__, config=json.loads(json.dumps(identity, default=str)),
        step=checkpoint_step(pretrained, getattr(lm, "revision", None), subfolder),
        model_name=short_model_name(pretrained))


def expected(eval_config, config: RunConfig) -> dict[str, Any]:
    """What a finished run of a command line holds in ``runs.config`` (the parts the command
    line decides); ``eval_config``: lm-eval's ``EvaluatorConfig`` of that command line."""
    cfg = eval_config
    return {"tasks": sorted(cfg.tasks.split(",") if isinstance(cfg.tasks, str) else cfg.tasks),
            "xai": config.identity(),
            "model_args": cfg.model_args, "limit": cfg.limit, "gen_kwargs": cfg.gen_kwargs or {},
            "seed": list(cfg.seed) if cfg.seed is not None else None,
            "num_fewshot": cfg.num_fewshot,
            "chat": {"apply_chat_template": cfg.apply_chat_template,
                     "fewshot_as_multiturn": cfg.fewshot_as_multiturn,
                     "system_instruction": cfg.system_instruction, "samples": cfg.samples}}


def _norm(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def matches(stored: dict[str, Any], want: dict[str, Any]) -> bool:
    """A stored run identity (``runs.config``) is the run ``want`` (``expected``) describes."""
    config = stored.get("config", {})
    seeds = [config.get(k) for k in ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")]
    limit = config.get("limit")
    same_limit = (limit is None and want["limit"] is None) or (
        limit is not None and want["limit"] is not None and float(limit) == float(want["limit"]))
    shots = set((stored.get("n-shot") or {}).values())
    stored_xai = {k: stored[k] for k in want["xai"].keys() | {"contrast", "graph", "faithfulness"}
                  if k in stored}
    return (sorted(stored.get("tasks", [])) == want["tasks"]
            and _norm(stored_xai) == _norm(want["xai"])
            and _norm(config.get("model_args")) == _norm(want["model_args"]) and same_limit
            and _norm(config.get("gen_kwargs") or {}) == _norm(want["gen_kwargs"])
            and (want["seed"] is None or seeds == want["seed"])
            and (want["num_fewshot"] is None or shots <= {want["num_fewshot"]})
            and all(_norm((stored.get("chat") or {}).get(k)) == _norm(v)
                    for k, v in want["chat"].items()))


def checkpoint_step(pretrained: str | None, revision: str | None = None,
                    subfolder: str | None = None) -> int | None:
    """Training step of a checkpoint: for a local directory (``pretrained``/``subfolder``) the
    ``global_step`` of its ``trainer_state.json`` (as HF Trainer writes it; transformers ignores
    ``revision`` there), for a hub model the step of its revision name (``checkpoints``: Pythia
    ``step143000``, OLMo ``stage1-step1000-tokens5B``, SmolLM3 ``stage1-step-40000`` …);
    ``None`` when neither says."""
    local = Path(str(pretrained or "")).expanduser()
    if pretrained and local.is_dir():
        try:
            step = json.loads((local / (subfolder or "") / STATE_FILE).read_text())["global_step"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return step if isinstance(step, int) else None
    return parse_revision(revision).step
