"""lm-eval's failures of a `run` turned into one line (what, where, what to do) instead of a traceback.

``explain_run_error(err, tasks, include_path)`` returns a ``UserError`` for what it recognises,
None otherwise (the original error then propagates):
1. "Tasks not found: x" (lm-eval's config check, before anything loads): a task YAML under
   ``--include_path`` that does not parse is named with its file and line (lm-eval skips such
   files silently, so the task looks unknown); else "did you mean" from lm-eval's own task index.
2. ``IndexError`` in lm-eval's "test one doc" step of ``ConfigurableTask.__init__``: the gold
   index of the task's first document is outside its choices — named with task, split and doc.
3. ``UnicodeDecodeError`` while a task loads its data: the task's data file that is not UTF-8
   (found by decoding the ``data_files`` of its config), with the byte offset.
4. A model directory without a tokenizer (transformers raises ValueError/OSError about the
   tokenizer): names the directory and what is missing.
The task of 2–3 is found in the traceback: the innermost frame whose ``self`` is an lm-eval Task.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from harness_xai.errors import UserError

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def _paths(include_path: Any) -> list[Path]:
    if not include_path:
        return []
    items = include_path if isinstance(include_path, (list, tuple)) else str(include_path).split(",")
    return [Path(str(p)).expanduser() for p in items if str(p).strip()]


def yaml_problems(include_path: Any) -> list[tuple[Path, int, str]]:
    """(file, line, problem) of every task YAML under ``include_path`` that does not parse."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)  # !function etc.
    found = []
    for root in _paths(include_path):
        files = [root] if root.is_file() else sorted(root.rglob("*.yaml")) if root.is_dir() else []
        for path in files:
            try:
                yaml.load(path.read_text(encoding="utf-8", errors="replace"), Loader=Loader)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                line = mark.line + 1 if mark is not None else 0
                problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                found.append((path, line, problem))
    return found


def _known_tasks(include_path: Any) -> list[str]:
    try:
        from lm_eval.tasks import TaskManager

        paths = [str(p) for p in _paths(include_path)] or None
        return list(TaskManager(include_path=paths).all_tasks)
    except Exception:  # noqa: BLE001 - the suggestion is a convenience
        return []


def unknown_tasks(missing: list[str], include_path: Any) -> UserError:
    """Case 1 of the module docstring."""
    names = ", ".join(missing)
    broken = yaml_problems(include_path)
    if broken:
        mentions = [b for b in broken if any(m in b[0].read_text(errors="replace") for m in missing)]
        path, line, problem = (mentions or broken)[0]
        return UserError(f"unknown task(s) in --tasks: {names}; the task YAML {path}:{line} is not "
                         f"valid YAML ({problem}), so lm-eval skipped it: fix that line")
    known = _known_tasks(include_path)
    guesses = []
    for name in missing:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        if close:
            guesses.append(f"'{close[0]}' for '{name}'")
    guess = f" did you mean {', '.join(guesses)}?" if guesses else ""
    return UserError(f"unknown task(s) in --tasks: {names}.{guess} List them with `harness-xai ls "
                     "tasks`; for your own YAMLs add --include_path DIR.")


def _task_frame(err: BaseException) -> dict | None:
    """Locals of the innermost traceback frame that runs a method of an lm-eval Task."""
    from lm_eval.api.task import Task

    found = None
    tb = err.__traceback__
    while tb is not None:
        if isinstance(tb.tb_frame.f_locals.get("self"), Task):
            found = tb.tb_frame.f_locals
        tb = tb.tb_next
    return found


def _task_name(task: Any) -> str:
    config = getattr(task, "config", None)
    return str(getattr(config, "task", None) or type(task).__name__)


def _data_files(config: Any) -> list[Path]:
    kwargs = getattr(config, "dataset_kwargs", None) or {}
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    if isinstance(files, dict):
        files = list(files.values())
    if isinstance(files, (str, Path)):
        files = [files]
    out = []
    for item in files or []:
        out += [Path(str(f)) for f in (item if isinstance(item, (list, tuple)) else [item])]
    return out


def _gold_out_of_range(err: IndexError) -> UserError | None:
    frame = _task_frame(err)
    if frame is None or "test_doc" not in frame or "test_target" not in frame:
        return None
    task = frame["self"]
    choices = frame.get("test_choice")
    n = len(choices) if isinstance(choices, list) else "?"
    split = getattr(task.config, "test_split", None) or getattr(task.config, "validation_split", None)
    doc = str(frame["test_doc"])
    doc = doc if len(doc) <= 80 else doc[:79] + "…"
    return UserError(f"task '{_task_name(task)}': the gold index {frame['test_target']!r} of its first "
                     f"document (doc 0 of split {split}: {doc}) is out of range for its {n} "
                     "choices: fix doc_to_target or the data")


def _bad_utf8(err: UnicodeDecodeError) -> UserError:
    frame = _task_frame(err)
    task = frame["self"] if frame is not None else None
    where = f"task '{_task_name(task)}': " if task is not None else ""
    for path in _data_files(getattr(task, "config", None)):
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            return UserError(f"{where}data file {path} is not valid UTF-8 (byte {exc.start}: "
                             f"{exc.reason}): re-encode it as UTF-8")
        except OSError:
            continue
    return UserError(f"{where}a data file is not valid UTF-8 ({err.reason} at byte {err.start}): "
                     "re-encode the task's data as UTF-8")


def _no_tokenizer(err: BaseException, pretrained: str | None) -> UserError | None:
    if "tokenizer" not in str(err).lower() or not pretrained:
        return None
    folder = Path(pretrained).expanduser()
    if not folder.is_dir() or any((folder / f).exists() for f in _TOKENIZER_FILES):
        return None
    return UserError(f"model directory {folder} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}): "
                     "save the tokenizer there (tokenizer.save_pretrained) or pass tokenizer=… in "
                     "--model_args")


def explain_run_error(err: BaseException, *, pretrained: str | None = None,
                      include_path: Any = None) -> UserError | None:
    """A one-line UserError for ``err`` raised by lm-eval's ``run``, or None."""
    if isinstance(err, ValueError) and str(err).startswith("Tasks not found"):
        missing = [t.strip() for t in str(err).split(":", 1)[1].split(",") if t.strip()]
        return unknown_tasks(missing, include_path)
    if isinstance(err, UnicodeDecodeError):
        return _bad_utf8(err)
    if isinstance(err, IndexError):
        return _gold_out_of_range(err)
    if isinstance(err, (ValueError, OSError, TypeError)):
        return _no_tokenizer(err, pretrained)
    return None
