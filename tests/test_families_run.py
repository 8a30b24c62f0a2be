"""End to end per family: `harness-xai run --attribute` on a tiny random model of each family added
for 2026 (saved with the test tokenizer), stored relevance = ``harness_xai.attribute``'s."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import EAGER_ONLY, MOE, tiny_model

from harness_xai.cli import main

TASKS = Path(__file__).resolve().parents[1] / "tasks"
FAMILIES = ("olmo3", "smollm3", "granite", "gemma3", "mixtral", "qwen3_moe", "olmoe", "gpt_oss")


def _sql(db: Path, query: str, params: dict | None = None):
    from harness_xai.store import run_sql

    return run_sql(f"duckdb:///{db}", query, params)[1]


def save_family(family: str, micro_model: Path, out: Path, **kwargs) -> Path:
    """A tiny random ``family`` model with the micro model's tokenizer, as an HF directory."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    attn = "eager" if family in EAGER_ONLY else "sdpa"
    model = tiny_model(family, attn, vocab=len(tokenizer), **kwargs)
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
        experts = _sql(db, "SELECT e.layer, e.position, sum(e.relevance), min(s.relevance) "
                           "FROM expert_relevance AS e JOIN state_relevance AS s ON "
                           "s.case_id = e.case_id AND s.layer = e.layer AND s.position = "
                           "e.position AND s.kind = 'mlp' WHERE e.case_id = :c "
                           "GROUP BY e.layer, e.position", {"c": case_id})
        if family in MOE:  # stored per expert; the experts of a layer add up to its MLP state
            routed = (2,) if family == "qwen3_moe" else (1, 2)  # qwen3_moe: layer 1 dense
            assert experts and {layer for layer, *_ in experts} == set(routed)
            for _, _, total, mlp in experts:
                assert total == pytest.approx(mlp, rel=1e-4, abs=1e-6)
            # positions without a row carry no MLP relevance (only the selected experts are kept)
            mlp = _sql(db, "SELECT sum(abs(relevance)) FROM state_relevance WHERE case_id = :c "
                           f"AND kind = 'mlp' AND layer IN ({', '.join(map(str, routed))})",
                       {"c": case_id})[0][0]
            assert sum(abs(m) for *_, m in experts) == pytest.approx(mlp, rel=1e-5)
        else:
            assert experts == []


def test_refused_and_unknown_families_answer_before_any_work(micro_model, tmp_path, capsys):
    """qwen3_next (Gated DeltaNet) is refused with what / where / what to do; an unknown
    model_type answers "did you mean … / supported: …"; exit 2, one line, no store written."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    config = AutoConfig.for_model(
        "qwen3_next", vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=32, linear_num_value_heads=4, linear_num_key_heads=2,
        linear_key_head_dim=12, linear_value_head_dim=12)
    model_dir = tmp_path / "qwen3_next"
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    mixtral_dir = save_family("mixtral", micro_model, tmp_path / "renamed")
    cfg = (mixtral_dir / "config.json").read_text().replace('"mixtral"', '"mixtrl"')
    capsys.readouterr()
    db = tmp_path / "never.duckdb"
    base = ["run", "--model", "hf", "--device", "cpu", "--include_path", str(TASKS),
            "--tasks", "xai_arith", "--limit", "2", "--attribute", "--xai-db", f"duckdb:///{db}"]
    assert main([*base, "--model_args", f"pretrained={model_dir}"]) == 2
    # one line of ours (transformers' own weight-loading progress bar may precede it)
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("harness-xai")]
    assert line.startswith("harness-xai: unsupported model family 'qwen3_next'")
    assert "Gated DeltaNet" in line and "qwen3_moe" in line and "without --attribute" in line
    (mixtral_dir / "config.json").write_text(cfg)
    with pytest.raises(Exception):  # transformers itself does not know "mixtrl"
        AutoModelForCausalLM.from_pretrained(mixtral_dir)
    from harness_xai.errors import UserError
    from harness_xai.lrp.adapters import get_adapter

    with pytest.raises(UserError, match=r"unsupported model family 'mixtrl': did you mean "
                                        r"'mixtral'\? supported: .*olmoe.*qwen3_moe"):
        get_adapter("mixtrl")
    assert not db.exists()
