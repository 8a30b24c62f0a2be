"""Whole-run overhead: `harness-xai run --attribute` vs plain `lm-eval run` (issue #15).

Usage:
    python bench/bench_run_overhead.py                       # micro model built here, 80 docs/task
    python bench/bench_run_overhead.py --model PATH --limit 80 --repeats 3
    python bench/bench_run_overhead.py --tasks xai_kv,xai_arith,xai_kv_gen --repeats 1   # quick
    python bench/bench_run_overhead.py --repeats 0 --count attribute --code OLD_CHECKOUT  # before

Both commands run as subprocesses with the same model, tasks, --limit, batch size and device:
1. ``plain``: ``python -m lm_eval run …`` (lm-eval's own command);
2. ``attribute``: ``python -m harness_xai run … --attribute --xai-db <fresh DuckDB>`` — lm-eval's
   run plus every incorrect sample's case, attribution, store writes (a fresh store each time, so
   every case is explained).
Tasks: the bundled demo tasks (xai_kv, xai_arith, xai_kv_gen) and ``fx_gsm8k`` — lm-eval's own
gsm8k.yaml (5-shot, 256 generated tokens, regex filters) bound to the local JSONL of
tests/fixtures. The two commands alternate, ``--repeats`` times each; the ratio is median wall
of ``attribute`` / median wall of ``plain`` (process start and imports included in both).
Then each command runs once more with a global forward hook (``--count``, default on; not
timed): model forward calls (calls of the token-embedding module, i.e. one per forward over the
model: each generation step, each scoring batch, each engine pass) and the tokens they
processed — deterministic, so trustworthy on a loaded machine where wall time is not.
The load average before and after is printed: on a shared machine read the counts and treat the
timings as indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

DEFAULT_TASKS = "xai_kv,xai_arith,xai_kv_gen,fx_gsm8k"

#: imported by the child (PYTHONPATH) when counting: a global forward hook on every nn.Embedding;
#: the largest table is the token embedding, called once per forward over the model
COUNTER = '''
import atexit, json, os
import torch
_counts = {}
def _hook(module, args, kwargs, output):
    if isinstance(module, torch.nn.Embedding):
        x = args[0] if args else kwargs.get("input")
        c = _counts.setdefault(module.num_embeddings, [0, 0])
        c[0] += 1
        c[1] += int(x.numel()) if hasattr(x, "numel") else 0
torch.nn.modules.module.register_module_forward_hook(_hook, with_kwargs=True)
@atexit.register
def _dump():
    with open(os.environ["BENCH_FORWARD_COUNTS"], "w") as f:
        json.dump(_counts, f)
'''


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _common(model: str, tasks: str, include: Path, limit: int, batch: int, out: Path) -> list[str]:
    return ["--model", "hf", "--model_args", f"pretrained={model},dtype=float32", "--tasks", tasks,
            "--include_path", str(include), "--device", "cpu", "--batch_size", str(batch),
            "--limit", str(limit), "--output_path", str(out), "--log_samples"]


def _command(kind: str, common: list[str], tmp: Path, i: int) -> list[str]:
    if kind == "plain":
        return [sys.executable, "-m", "lm_eval", "run", *common]
    db = tmp / f"run{i}.duckdb"
    return [sys.executable, "-m", "harness_xai", "run", *common, "--attribute",
            "--xai-db", f"duckdb:///{db}", "--xai-no-progress"]


def _run(cmd: list[str], env: dict, cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()  # cwd: a neutral folder, so `-m` imports from PYTHONPATH (--code)
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    summary = next((ln for ln in done.stdout.splitlines() if ln.startswith("harness-xai:")), "")
    return seconds, summary


def _model(path: str | None, tmp: Path) -> str:
    if path:
        return path
    from conftest import MICRO_SPEC

    from harness_xai.zoo import build_model
    from harness_xai.zoo.train import TrainSpec

    print("building the micro model (tests/conftest.py MICRO_SPEC) …", flush=True)
    return str(build_model(tmp / "zoo", spec=TrainSpec(**MICRO_SPEC), progress=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: build the tests' micro model)")
    parser.add_argument("--tasks", default=DEFAULT_TASKS)
    parser.add_argument("--limit", type=int, default=80, help="docs per task (default 80)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--count", default="plain,attribute", type=lambda v: [k for k in v.split(",") if k],
                        help="commands whose model forwards are counted (default both; '' for none)")
    parser.add_argument("--code", default=str(ROOT),
                        help="checkout whose harness_xai the commands import (default: this one; "
                             "e.g. an older checkout to compare before/after)")
    args = parser.parse_args(argv)
    from fixtures.lm_eval_tasks import write_tasks

    tmp = Path(tempfile.mkdtemp(prefix="bench-run-"))
    model = _model(args.model, tmp)
    include = tmp / "tasks"  # one --include_path: the fixture YAMLs and the bundled tasks
    write_tasks(include)
    for bundled in (ROOT / "tasks").iterdir():
        shutil.copytree(bundled, include / bundled.name)  # lm-eval's index skips symlinks
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([args.code, os.environ.get("PYTHONPATH", "")])}
    print(f"model {model}; tasks {args.tasks}; limit {args.limit}; batch {args.batch_size}; "
          f"code {args.code}; load before {_load()}", flush=True)
    times: dict[str, list[float]] = {"plain": [], "attribute": []}
    i = 0
    for r in range(args.repeats):
        for kind in ("plain", "attribute"):
            i += 1
            common = _common(model, args.tasks, include, args.limit, args.batch_size, tmp / f"out{i}")
            seconds, summary = _run(_command(kind, common, tmp, i), env, tmp)
            times[kind].append(seconds)
            print(f"  repeat {r + 1} {kind:<9} {seconds:7.1f} s  load {_load()}"
                  + (f"\n    {summary}" if summary else ""), flush=True)
    if args.repeats:
        plain, attr = statistics.median(times["plain"]), statistics.median(times["attribute"])
        print(f"median wall: plain {plain:.1f} s, attribute {attr:.1f} s, ratio {attr / plain:.2f} "
              f"(load after {_load()})")
    if args.count:
        (tmp / "counter").mkdir()
        (tmp / "counter" / "sitecustomize.py").write_text(COUNTER)
        counts = {}
        for kind in args.count:
            i += 1
            path = tmp / f"counts_{kind}.json"
            env_c = {**env, "BENCH_FORWARD_COUNTS": str(path),
                     "PYTHONPATH": os.pathsep.join([str(tmp / "counter"), env["PYTHONPATH"]])}
            common = _common(model, args.tasks, include, args.limit, args.batch_size, tmp / f"out{i}")
            _run(_command(kind, common, tmp, i), env_c, tmp)
            table = json.loads(path.read_text())
            counts[kind] = table[max(table, key=int)] if table else [0, 0]  # the token embedding
        for kind, (calls, tokens) in counts.items():
            print(f"model forwards {kind:<9} {calls:>7} calls {tokens:>10} tokens")
        p, a = counts.get("plain", [0, 0]), counts.get("attribute", [0, 0])
        if p[0] and a[0]:
            print(f"forward calls attribute / plain {a[0] / p[0]:.2f}; tokens {a[1] / max(p[1], 1):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
