"""Build (train, save, cache) the zoo's models.

1. A model's identity is the hash of its spec (``TrainSpec`` for ``llama-tiny``, ``FamilySpec``
   for the zoo family; both include a code version).
2. ``zoo/<name>/zoo_build.json`` records that hash; a build with the same hash is a cache hit and
   returns at once.
3. Otherwise train, ``save_pretrained`` model and tokenizer into a temporary sibling directory,
   write ``zoo_build.json`` last, then rename it into place — an interrupted build leaves no
   half-written model behind.

Family models (``build_zoo``) are trained once each; every checkpoint is saved while training as
``zoo/<name>/step<N>/`` (a complete Hugging Face directory with a ``trainer_state.json`` whose
``global_step`` is ``N``, the field HF Trainer checkpoints carry), and ``zoo/<name>/`` itself holds
the final checkpoint — as on a hub, where the default branch is the final model and the training
checkpoints are other revisions. transformers ignores ``revision=`` for local directories (it
would silently load the final model), so a checkpoint is selected with
``pretrained=zoo/<name>,subfolder=step<N>`` (or ``pretrained=zoo/<name>/step<N>``). Independent
models train in parallel processes (``jobs``), one thread each, so the weights do not depend on
``jobs``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness_xai.zoo.train import TrainSpec, train

DEMO_MODEL = "llama-tiny"
#: training steps of the demo build: None = TrainSpec's own schedule (kv-only until retrieval
#: forms, ~250 steps, restarting on a plateau; then 400 mixed steps: ~45 s on 2 idle cores).
#: A small number cuts phase 1 short (no restart) and can leave retrieval unlearned.
DEMO_STEPS: int | None = None
BUILD_FILE = "zoo_build.json"
#: what HF Trainer writes into every checkpoint; harness-xai reads its ``global_step``
STATE_FILE = "trainer_state.json"


def spec_hash(spec) -> str:
    return hashlib.sha256(json.dumps(spec.as_dict(), sort_keys=True).encode()).hexdigest()[:16]


def build_model(zoo_dir: str | Path = "zoo", name: str = DEMO_MODEL, spec: TrainSpec | None = None,
                steps: int | None = None, force: bool = False, progress: bool = True) -> Path:
    """The trained model directory ``zoo_dir/name`` (cached by spec hash)."""
    spec = spec or TrainSpec()
    if steps is not None:
        spec = dataclasses.replace(spec, steps=steps)
    target = Path(zoo_dir) / name
    wanted = spec_hash(spec)
    if not force and _built_hash(target) == wanted:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, tokenizer, stats = train(spec, progress=progress)
    return _save_build(target, spec, model, tokenizer, stats, started, progress)


def build_steps_model(zoo_dir: str | Path = "zoo", spec=None, force: bool = False,
                      progress: bool = True) -> Path:
    """The steps model ``zoo_dir/llama-steps`` (``xai_steps``; cached by spec hash). Not part of
    the demo zoo: bench/bench_localiser.py and the tests build it."""
    from harness_xai.zoo.steps_train import StepsSpec, train_steps

    spec = spec or StepsSpec()
    target = Path(zoo_dir) / spec.name
    if not force and _built_hash(target) == spec_hash(spec):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, tokenizer, stats = train_steps(spec, progress=progress)
    return _save_build(target, spec, model, tokenizer, stats, started, progress)


def _save_build(target: Path, spec, model, tokenizer, stats: dict[str, Any], started: float,
                progress: bool) -> Path:
    """Save a trained model into ``target`` atomically (``zoo_build.json`` written last)."""
    name, wanted = target.name, spec_hash(spec)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {"name": name, "spec_hash": wanted, "spec": spec.as_dict(), "stats": stats,
                "build_seconds": round(time.perf_counter() - started, 2)}
        (tmp / BUILD_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if progress:
        print(f"zoo: built {target} in {info['build_seconds']:.0f}s", flush=True)
    return target


def _built_hash(target: Path) -> str | None:
    try:
        return json.loads((target / BUILD_FILE).read_text())["spec_hash"]
    except (OSError, ValueError, KeyError):
        return None


def build_zoo(zoo_dir: str | Path = "zoo", names: Iterable[str] | None = None, jobs: int = 1,
              force: bool = False, progress: bool = True, **overrides: Any) -> dict[str, Path]:
    """``{name: zoo_dir/name}`` for the family models ``names`` (default: all), trained where the
    cache misses — ``jobs`` at a time, in worker processes; ``overrides`` change spec fields
    (tests: fewer steps)."""
    from harness_xai.zoo.family import ZOO_MODELS, family_spec

    specs = [family_spec(name, **overrides) for name in (names or ZOO_MODELS)]
    root = Path(zoo_dir)
    todo = [spec for spec in specs if force or not is_built(root / spec.name, spec)]
    root.mkdir(parents=True, exist_ok=True)
    if len(todo) > 1 and jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in [pool.submit(_build_family_model, root, spec, progress)
                           for spec in todo]:
                future.result()
    else:
        for spec in todo:
            _build_family_model(root, spec, progress)
    return {spec.name: root / spec.name for spec in specs}


def is_built(target: Path, spec) -> bool:
    """``target`` holds the complete build of ``spec`` (its hash and every checkpoint)."""
    if _built_hash(target) != spec_hash(spec):
        return False
    return all((target / f"step{step}" / "config.json").is_file() for step in spec.checkpoints)


def checkpoints(target: str | Path) -> list[int]:
    """Steps of the checkpoints of a built family model (``[]`` for a single-model build)."""
    try:
        info = json.loads((Path(target) / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [int(c["step"]) for c in info.get("stats", {}).get("checkpoints", [])]


def _build_family_model(root: Path, spec, progress: bool) -> Path:
    """Train one family model and save its checkpoints (atomic, see the module docstring)."""
    from transformers.utils import logging as hf_logging

    from harness_xai.zoo.family import train_family
    from harness_xai.zoo.tokenizer import train_tokenizer

    hf_logging.disable_progress_bar()  # "Writing model shards" once per checkpoint
    started = time.perf_counter()
    target = root / spec.name
    tokenizer = train_tokenizer(spec.vocab_size, spec.tokenizer_texts, spec.seed)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=root))

    def save(step: int, model, info: dict[str, Any]) -> None:
        out = tmp / f"step{step}"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        state = {"global_step": step, "max_steps": spec.steps, "log_history": [info],
                 "zoo_model": spec.name}
        (out / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")

    try:
        stats = train_family(spec, tokenizer, save, progress=progress)
        final = tmp / f"step{spec.checkpoints[-1]}"
        for item in final.iterdir():  # the directory itself = the final checkpoint ("main")
            shutil.copy2(item, tmp / item.name)
        info = {"name": spec.name, "spec_hash": spec_hash(spec), "spec": spec.as_dict(),
                "stats": stats, "build_seconds": round(time.perf_counter() - started, 2)}
        (tmp / BUILD_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if progress:
        print(f"zoo: built {target} ({len(spec.checkpoints)} checkpoints) in "
              f"{info['build_seconds']:.0f}s", flush=True)
    return target


def zoo_table(zoo_dir: str | Path) -> list[dict[str, Any]]:
    """One row per built model under ``zoo_dir``: name, model_type, n_params and
    ``checkpoints`` as ``[(step, held-out kv retrieval)…]``."""
    rows = []
    for info_file in sorted(Path(zoo_dir).glob(f"*/{BUILD_FILE}")):
        try:
            info = json.loads(info_file.read_text())
            config = json.loads((info_file.parent / "config.json").read_text())
        except (OSError, ValueError):
            continue
        stats = info.get("stats", {})
        points = [(int(c["step"]), float(c["kv_heldout_accuracy"]))
                  for c in stats.get("checkpoints", [])]
        rows.append({"name": info_file.parent.name, "model_type": config.get("model_type"),
                     "n_params": stats.get("n_params"), "checkpoints": points})
    return rows
