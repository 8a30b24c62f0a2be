import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

#: the zoo's architecture, tokenizer and data, trained for a few steps on short contexts (seconds)
MICRO_SPEC = dict(steps=10, kv_batch=4, arith_batch=8, tokenizer_texts=1000, kv_records=(4, 8))


@pytest.fixture(scope="session")
def micro_model(tmp_path_factory) -> Path:
    from harness_xai.zoo import build_model
    from harness_xai.zoo.train import TrainSpec

    return build_model(tmp_path_factory.mktemp("zoo"), spec=TrainSpec(**MICRO_SPEC), progress=False)


@pytest.fixture(scope="session")
def generative_run(micro_model, tmp_path_factory):
    """lm-eval's own ifeval, minerva_math, humaneval, mbpp, bbh, mmlu_pro, babilong, RULER NIAH configs
    on local JSONL, evaluated with the micro model (tests/fixtures/generative_run.py)."""
    from fixtures.generative_run import run_generative

    return run_generative(micro_model, tmp_path_factory.mktemp("generative_tasks"))


#: a test that needs one of these (a trained model, an lm-eval run, a browser, a zoo) is slow;
#: so is every test of the modules in SLOW_MODULES (several processes, subprocess CLIs)
SLOW_FIXTURES = {"micro_model", "zoo", "attributed_run", "zero_shot", "degenerate", "browser",
                 "report_dir", "hostile_report", "reference", "fixture_tasks",
                 "generative_run"}
SLOW_MODULES = {"test_distributed", "test_report_browser", "test_store_alembic_cli",
                "test_store_resume", "test_sweep", "test_zoo", "test_browser"}


def pytest_collection_modifyitems(config, items):
    """Mark the slow tests (``pytest -m "not slow"`` is the fast loop; CI runs everything)."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in SLOW_MODULES or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


#: torch's thread count when the session started: every test (and the fixtures it set up) must
#: leave it there, or later in-process numbers depend on test order (a kill -9 resume test once
#: compared values 5e-7 apart because an in-process training had left torch on one thread)
_THREADS: list[int] = []


def pytest_configure(config):
    import torch

    _THREADS.append(torch.get_num_threads())


@pytest.fixture(autouse=True)
def _torch_threads_unchanged():
    yield
    import torch

    now = torch.get_num_threads()
    if _THREADS and now != _THREADS[0]:
        torch.set_num_threads(_THREADS[0])
        pytest.fail(f"torch's thread count is {now}, was {_THREADS[0]} when the session began: "
                    "restore it where it is set (try/finally)")
