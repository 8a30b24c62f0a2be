"""End to end per family: `harness-xai run --attribute` on a tiny random model of each family added
for 2026 (saved with the test tokenizer), stored relevance = ``harness_xai.attribute``'s."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

from harness_xai.cli import main

TASKS = Path(__file__).resolve().parents[1] / "tasks"
FAMILIES = ("olmo3", "smollm3", "granite", "gemma3", "mixtral", "qwen3_moe", "olmoe")


def _sql(db: Path, query: str, params: dict | None = None):
    from harness_xai.store import run_sql

    return run_sql(f"duckdb:///{db}", query, params)[1]


def save_family(family: str, micro_model: Path, out: Path, **kwargs) -> Path:
    """A tiny random ``family`` model with the micro model's tokenizer, as an HF directory."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    model = tiny_model(family, vocab=len(tokenizer), **kwargs)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_run_attribute_end_to_end(family, micro_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from harness_xai import attribute

    model_dir = save_family(family, micro_model, tmp_path / family)
    db = tmp_path / "xai.duckdb"
    argv = ["run", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
            "--tasks", "xai_arith", "--include_path", str(TASKS), "--device", "cpu",
            "--batch_size", "4", "--limit", "6", "--output_path", str(tmp_path / "res"),
            "--log_samples", "--attribute", "--xai-db", f"duckdb:///{db}", "--xai-no-progress"]
    assert main(argv) == 0
    (model_type,) = _sql(db, "SELECT DISTINCT model_type FROM runs")[0]
    assert model_type == family
    rows = _sql(db, "SELECT id, wrong_token_id, gold_token_id, delta FROM cases "
                    "WHERE status = 'attributed' ORDER BY id")
    assert rows, "a random model gets some of the six wrong"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert model.config.model_type == family
    for case_id, wrong, gold, delta in rows[:2]:
        tokens = _sql(db, "SELECT token_id, relevance FROM token_relevance WHERE case_id = :c "
                          "ORDER BY position", {"c": case_id})
        ids = [t for t, _ in tokens]
        with torch.no_grad():  # inputs as lm-eval passes them: input_ids only
            logits = model(torch.tensor([ids])).logits[0, -1]
        assert delta == pytest.approx((logits[wrong] - logits[gold]).item(), abs=1e-4)
        ref = attribute(model, None, ids, wrong, gold)
        got = torch.tensor([r for _, r in tokens], dtype=torch.float32)
        torch.testing.assert_close(got, ref.tokens, rtol=1e-4, atol=1e-5)
