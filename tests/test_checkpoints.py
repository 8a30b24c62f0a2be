"""Checkpoint revision names → (stage, ingredient, step, tokens): a table of real series' names,
their order, and unknown names kept as given."""

from __future__ import annotations

import pytest

from harness_xai.checkpoints import format_tokens, order, parse_revision
from harness_xai.identity import checkpoint_step

TABLE = [  # name, stage, ingredient, step, tokens
    ("step143000", None, None, 143000, None),  # Pythia
    ("step0", None, None, 0, None),
    ("stage1-step1000-tokens5B", 1, None, 1000, 5e9),  # OLMo 2 / OLMo 3
    ("stage1-step928646-tokens3896B", 1, None, 928646, 3896e9),
    ("stage2-ingredient1-step11931-tokens100B", 2, 1, 11931, 100e9),
    ("stage2-ingredient3-step23852-tokens200B", 2, 3, 23852, 200e9),
    ("step1200000-tokens5033B", None, None, 1200000, 5033e9),  # OLMoE
    ("step20000-tokens84B", None, None, 20000, 84e9),  # OLMo 1
    ("stage1-step-40000", 1, None, 40000, None),  # SmolLM3
    ("Stage2-Step-2000", 2, None, 2000, None),  # case-insensitive
    ("step5-tokens1.5T", None, None, 5, 1.5e12),
    ("step10-tokens300K", None, None, 10, 3e5),
]
UNKNOWN = ["main", "v1.0", "a1b2c3d", "step", "stage1", "step12abc", "stepx", "step-1-tokens5Q",
           "", "pre-step100"]


@pytest.mark.parametrize("name,stage,ingredient,step,tokens", TABLE)
def test_known_names_parse(name, stage, ingredient, step, tokens):
    c = parse_revision(name)
    assert c.known and c.name == name
    assert (c.stage, c.ingredient, c.step) == (stage, ingredient, step)
    assert c.tokens == (pytest.approx(tokens) if tokens is not None else None)
    assert checkpoint_step("org/model", name) == step  # the sweep records the same step


@pytest.mark.parametrize("name", UNKNOWN)
def test_unknown_names_keep_working(name):
    c = parse_revision(name)
    assert not c.known and c.name == name
    assert (c.stage, c.ingredient, c.step, c.tokens) == (None, None, None, None)
    assert c.describe() == name
    assert checkpoint_step("org/model", name) is None
    assert parse_revision(None).name == "" and not parse_revision(None).known


def test_order_by_stage_ingredient_step_then_unknown_as_given():
    names = ["stage2-ingredient1-step11931-tokens100B", "main", "stage1-step928646-tokens3896B",
             "stage1-step1000-tokens5B", "v2", "stage2-ingredient1-step10-tokens1B"]
    ordered, note = order(names)
    assert [c.name for c in ordered] == [
        "stage1-step1000-tokens5B", "stage1-step928646-tokens3896B",
        "stage2-ingredient1-step10-tokens1B", "stage2-ingredient1-step11931-tokens100B",
        "main", "v2"]
    assert note is not None and "'main'" in note and "'v2'" in note and "order given" in note
    assert order(["step3", "step1"]) == ([parse_revision("step1"), parse_revision("step3")], None)


def test_labels():
    assert parse_revision("stage2-ingredient1-step11931-tokens100B").describe() == \
        "stage 2 · ingredient 1 · step 11931 · 100B tokens"
    assert parse_revision("step1200000-tokens5033B").describe() == "step 1200000 · 5.03T tokens"
    assert parse_revision("step143000").describe() == "step 143000"
    assert format_tokens(5e9) == "5B" and format_tokens(999) == "999"


def test_study_orders_a_series_by_stage_then_step_and_shows_tokens():
    """OLMo's stage 2 restarts its step count: the study's points follow (stage, step)."""
    from harness_xai.report import study

    revisions = ["stage2-ingredient1-step100-tokens1B", "stage1-step5000-tokens20B",
                 "stage1-step1000-tokens4B", "main"]
    runs = [{"id": i, "config": "{}", "method": "attnlrp", "pretrained": "allenai/OLMo-2",
             "model_type": "olmo2", "n_params": 7, "revision": r,
             "step": parse_revision(r).step} for i, r in enumerate(revisions)]
    rows = {i: [{"task": "t", "value": 0.5, "n_samples": 4}] for i in range(len(runs))}
    (cohort,) = study.cohorts(runs, rows, [], [])
    points = cohort.tasks["t"]
    assert [p.run_id for p in points] == [3, 2, 1, 0]  # unknown "main" (no step) first
    assert [p.tokens for p in points] == [None, "4B", "20B", "1B"]


def test_study_joins_stages_end_to_end_on_the_checkpoint_axis():
    """A series whose stage 2 restarts its step count draws one line that goes on after stage 1:
    x = step + the last step of every earlier stage, in (stage, step) order; a single-stage
    series keeps its raw steps; the by-size lines keep stage 1 and stage 2 checkpoints apart."""
    from harness_xai.report import study

    olmo = ["stage1-step1000-tokens4B", "stage2-ingredient1-step100-tokens1B",
            "stage1-step5000-tokens20B", "stage2-ingredient1-step0-tokens0B",
            "stage2-ingredient2-step100-tokens1B"]
    pythia = ["step1000", "step143000"]
    runs = []
    for i, (name, rev) in enumerate([("OLMo-2-7B", r) for r in olmo] +
                                    [("pythia-70m", r) for r in pythia] +
                                    [("OLMo-2-1B", "stage2-ingredient1-step100-tokens1B"),
                                     ("OLMo-2-1B", "stage1-step100-tokens1B")]):
        runs.append({"id": i, "config": "{}", "method": "attnlrp", "pretrained": f"allenai/{name}",
                     "model_name": name, "model_type": "olmo2" if "OLMo" in name else "gpt_neox",
                     "n_params": 7 if "7B" in name else 1, "revision": rev,
                     "step": parse_revision(rev).step})
    rows = {r["id"]: [{"task": "t", "value": r["id"] / 10, "n_samples": 4}] for r in runs}
    (cohort,) = study.cohorts(runs, rows, [], [])
    points = cohort.tasks["t"]
    lines = {line["name"]: line["points"] for line in study.by_checkpoint(points, "accuracy")}
    # stage 1: 1000, 5000; stage 2 ingredient 1: 0, 100 → 5000, 5100; ingredient 2: 100 → 5200
    assert lines["OLMo-2-7B"] == [(1000.0, 0.0), (5000.0, 0.2), (5000.0, 0.3), (5100.0, 0.1),
                                  (5200.0, 0.4)]
    assert lines["pythia-70m"] == [(1000.0, 0.5), (143000.0, 0.6)]  # one stage: raw steps
    assert study.checkpoint_axis(points) == "training step (stages joined end to end)"
    assert study.checkpoint_axis([p for p in points if p.series == "pythia-70m"]) == "training step"
    sizes = {line["name"] for line in study.by_size(points, "accuracy")}
    assert "OLMo-2-* @ stage 2 · ingredient 1 · step 100" in sizes  # 1B and 7B at stage 2 ingredient 1 step 100
    assert not any(name.endswith("@ step 100") for name in sizes)  # stage 1 step 100: 1B only
