"""Compliant edits for instruction checks (``contrast.instructions``, issue #14): every built-in
repair's edits pass lm-eval's own IFEval checker for that instruction (the oracle is lm-eval's
``INSTRUCTION_DICT`` class, built the way ``ifeval/utils.py`` builds it), on a response that
fails it; edits of several failed instructions pass all of them; unrepairable instructions are
reasoned skips; the registry refuses taken ids and answers unknown ones."""

from __future__ import annotations

import pytest

from harness_xai.contrast.instructions import (INSTRUCTION_REPAIRS, compliant_edits,
                                               register_instruction_repair)
from harness_xai.errors import UserError

ENGLISH = ("The old river runs past the Stone Mill, and every spring the village children walk "
           "along its bank to watch the herons fish in the shallow water near the bridge.")

#: instruction id -> (kwargs as the dataset gives them, a response that fails the check)
FAILING = {
    "keywords:existence": ({"keywords": ["lantern", "harbour"]}, ENGLISH),
    "keywords:frequency": ({"keyword": "river", "frequency": 3, "relation": "at least"}, ENGLISH),
    "keywords:forbidden_words": ({"forbidden_words": ["river", "bridge"]}, ENGLISH),
    "keywords:letter_frequency": ({"letter": "z", "let_frequency": 4, "let_relation": "at least"},
                                  ENGLISH),
    "length_constraints:number_words": ({"num_words": 6, "relation": "less than"}, ENGLISH),
    "length_constraints:number_sentences": ({"num_sentences": 3, "relation": "at least"}, ENGLISH),
    "detectable_content:number_placeholders": ({"num_placeholders": 2}, ENGLISH),
    "detectable_content:postscript": ({"postscript_marker": "P.P.S"}, ENGLISH),
    "detectable_format:number_bullet_lists": ({"num_bullets": 2}, "* one\n* two\n* three\nend"),
    "detectable_format:constrained_response": ({}, ENGLISH),
    "detectable_format:number_highlighted_sections": ({"num_highlights": 3}, ENGLISH),
    "detectable_format:multiple_sections": ({"section_spliter": "Section", "num_sections": 2},
                                            ENGLISH),
    "detectable_format:json_format": ({}, 'a "quoted" line\nand a \\ backslash'),
    "detectable_format:title": ({}, ENGLISH),
    "combination:repeat_prompt": ({"prompt_to_repeat": "Why do herons fish at dawn?"},
                                  "Why do herons sleep? Because " + ENGLISH),
    "startend:end_checker": ({"end_phrase": "Any other questions?"}, ENGLISH),
    "startend:quotation": ({}, '"' + ENGLISH),
    "change_case:english_lowercase": ({}, ENGLISH),
    "change_case:english_capital": ({}, ENGLISH),
    "change_case:capital_word_frequency": ({"capital_frequency": 2, "capital_relation": "less than"},
                                           "THE OLD RIVER runs past the MILL. " + ENGLISH),
    "punctuation:no_comma": ({}, ENGLISH),
}


def checker(instruction_id: str, kwargs: dict, prompt: str = "p"):
    """lm-eval's own check, built as ``ifeval/utils.test_instruction_following_strict`` does."""
    from lm_eval.tasks.ifeval import instructions_registry

    instruction = instructions_registry.INSTRUCTION_DICT[instruction_id](instruction_id)
    instruction.build_description(**{k: v for k, v in kwargs.items() if v})
    args = instruction.get_instruction_args()
    if args and "prompt" in args:
        instruction.build_description(prompt=prompt)
    return lambda text: bool(text.strip()) and bool(instruction.check_following(text))


def boundaries(text: str) -> list[int]:
    """Every word start and the end: where a generated token could begin."""
    return [0] + [i for i in range(1, len(text)) if text[i - 1] != " " and text[i] == " "] + [len(text)]


def sample(ids: list[str], kwargs: list[dict], flags: list[bool]) -> dict:
    return {"doc": {"instruction_id_list": ids, "kwargs": kwargs, "prompt": "p"},
            "inst_level_strict_acc": flags}


@pytest.fixture(scope="module", autouse=True)
def punkt():
    from fixtures.offline_assets import build_punkt_tab

    build_punkt_tab()


def test_every_built_in_instruction_has_a_failing_example():
    assert set(FAILING) == set(INSTRUCTION_REPAIRS)


@pytest.mark.parametrize("instruction_id", sorted(FAILING))
def test_every_edit_passes_lm_evals_own_check(instruction_id):
    kwargs, response = FAILING[instruction_id]
    check = checker(instruction_id, kwargs)
    assert not check(response)  # the example fails, as a sample the repair is asked for would
    edits = compliant_edits(sample([instruction_id], [kwargs], [False]), "prompt_level_strict_acc",
                            response, boundaries(response))
    assert edits.reason is None and edits.texts and edits.failed == (instruction_id,)
    failing = [e for e in edits.texts if not check(e)]
    assert not failing, failing[:3]
    assert response not in edits.texts


def test_positional_edits_cover_every_position_and_keep_the_response_around_them():
    """An insertion at p keeps text[:p] and text[p:] (the model's tokens before the edit are its
    own, so the contrast lands at p); a truncation keeps text[:p]."""
    response = ENGLISH
    at = boundaries(response)
    ins = compliant_edits(sample(["detectable_format:title"], [{}], [False]),
                          "prompt_level_strict_acc", response, at).texts
    assert len(ins) == len(at)
    for p, edit in zip(at, ins):
        assert edit.startswith(response[:p]) and edit.endswith(response[p:])
    cut = compliant_edits(sample(["length_constraints:number_words"],
                                 [{"num_words": 6, "relation": "less than"}], [False]),
                          "prompt_level_strict_acc", response, at).texts
    assert cut and all(response.startswith(e) for e in cut)
    assert len(cut) == sum(1 for p in at if 0 < p < len(response)
                           and len(response[:p].split()) < 6)


def test_several_failed_instructions_are_repaired_together_and_passed_ones_left_alone():
    ids = ["keywords:existence", "startend:end_checker", "punctuation:no_comma"]
    kwargs = [{"keywords": ["lantern"]}, {"end_phrase": "Any other questions?"}, {}]
    response = ENGLISH  # has commas: the third passes only if told it failed
    edits = compliant_edits(sample(ids, kwargs, [False, False, True]), "prompt_level_strict_acc",
                            response, boundaries(response))
    assert edits.failed == tuple(ids[:2])
    checks = [checker(i, k) for i, k in zip(ids, kwargs)]
    assert edits.texts and all(checks[0](e) and checks[1](e) for e in edits.texts)
    comma = response.index(",") + 1  # the passed instruction was not touched: nothing deletes
    kept = [e for e in edits.texts if e.startswith(response[:comma])]  # commas the edit keeps
    assert kept and all("," in e for e in kept)
    told = compliant_edits(sample(ids, kwargs, [False, False, False]), "prompt_level_strict_acc",
                           response, boundaries(response))
    assert told.texts and not any("," in e for e in told.texts)
    # every position of either instruction is proposed (no product): keyword insertions and
    # end-phrase truncations, the other applied at the end
    assert len(edits.texts) >= len(boundaries(response))
    loose = compliant_edits({**sample(ids, kwargs, [False, False, True]),
                             "inst_level_loose_acc": [True, False, True]},
                            "prompt_level_loose_acc", response, boundaries(response))
    assert loose.failed == ("startend:end_checker",)


def test_unrepairable_instructions_and_docs_are_reasoned_skips():
    edits = compliant_edits(sample(["language:response_language", "punctuation:no_comma"],
                                   [{"language": "de"}, {}], [False, False]),
                            "prompt_level_strict_acc", ENGLISH, boundaries(ENGLISH))
    assert edits.reason == "no-repair:language.response_language" and not edits.texts
    same = compliant_edits(sample(["change_case:english_lowercase"], [{}], [False]),
                           "prompt_level_strict_acc", "already lower", [0, 13])
    assert same.reason == "no-edit:change_case.english_lowercase"  # nothing a case change fixes
    none = compliant_edits(sample(["punctuation:no_comma"], [{}], [True]),
                           "prompt_level_strict_acc", ENGLISH, [0])
    assert none.reason == "no-failed-instruction"


def test_repairs_register_like_every_extension_point():
    with pytest.raises(UserError, match="already registered"):
        register_instruction_repair("punctuation:no_comma", lambda t, a, at: [t])
    with pytest.raises(UserError, match="did you mean 'punctuation:no_comma'"):
        INSTRUCTION_REPAIRS.get("punctuation:no_coma")
    original = INSTRUCTION_REPAIRS["punctuation:no_comma"]
    try:
        register_instruction_repair("punctuation:no_comma", lambda t, a, at: [t.replace(",", ";")],
                                    overwrite=True)
        edits = compliant_edits(sample(["punctuation:no_comma"], [{}], [False]),
                                "prompt_level_strict_acc", "a, b", [0])
        assert edits.texts == ("a; b",)
        register_instruction_repair("language:response_language",
                                    lambda t, a, at: [t + " (auf Deutsch)"])
        assert compliant_edits(sample(["language:response_language"], [{"language": "de"}],
                                      [False]), "prompt_level_strict_acc", "x", [0]).texts
    finally:
        register_instruction_repair("punctuation:no_comma", original, overwrite=True)
        INSTRUCTION_REPAIRS.unregister("language:response_language")


# --- planted violations: the contrast lands on the violating token ------------------------------

#: (IFEval doc, the scripted model's response, the violation's first character in it): for these
#: instructions the compliant edit deletes or rewrites exactly the violation, so the contrast must
#: be the token that starts there, with the model's own tokens before it
PLANTED = [
    ({"key": 1, "prompt": "Describe the mill without any commas.",
      "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
     " the mill stands by the river, and herons fish there.", ","),
    ({"key": 2, "prompt": "Describe herons. Do not say bridge.",
      "instruction_id_list": ["keywords:forbidden_words"], "kwargs": [{"forbidden_words": ["bridge"]}]},
     " herons fish by the old bridge at dawn.", " bridge"),
    ({"key": 3, "prompt": "Say river less than 2 times.",
      "instruction_id_list": ["keywords:frequency"],
      "kwargs": [{"keyword": "river", "frequency": 2, "relation": "less than"}]},
     " the river bends and the river shines.", " river shines"),
    ({"key": 4, "prompt": "Use fewer than 2 capital words.",
      "instruction_id_list": ["change_case:capital_word_frequency"],
      "kwargs": [{"capital_frequency": 2, "capital_relation": "less than"}]},
     " the OLD MILL stands.", " MILL"),
]


def test_planted_violations_are_the_contrast(micro_model, tmp_path):
    """A model fine-tuned to write each response (greedy, token for token) fails lm-eval's own
    IFEval checks at a planted spot; the case's contrast is the token that starts the violation:
    the tokens before it decode to the response up to that character, the model's token continues
    with the violation, the gold text is the compliant edit (accepted by the task), and the
    engine's Δ is > 0."""
    import lm_eval
    from fixtures.lm_eval_tasks import builtin_tasks_dir, write_task
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from scripted_model import build_scripted_model

    from harness_xai.contrast import task_cases
    from harness_xai.lrp import explain

    docs = [doc for doc, _, _ in PLANTED]
    folder = write_task(tmp_path / "tasks", "fx_planted_ifeval",
                        {"include": str(builtin_tasks_dir() / "ifeval" / "ifeval.yaml")},
                        {"train": docs})
    tm = TaskManager(include_path=str(folder), include_defaults=False)
    task = tm.load(["fx_planted_ifeval"])["tasks"]["fx_planted_ifeval"]
    model = build_scripted_model(micro_model, tmp_path / "model",
                                 [(task.doc_to_text(d), r) for d, r, _ in PLANTED])
    lm = HFLM(pretrained=str(model), device="cpu", dtype="float32", batch_size=1)
    results = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=tm, log_samples=True,
                                      gen_kwargs="max_gen_toks=48")
    samples = results["samples"]["fx_planted_ifeval"]
    assert [s["resps"][0][0] for s in sorted(samples, key=lambda s: s["doc_id"])] == \
        [r for _, r, _ in PLANTED]  # the scripted greedy output, failing every check
    built = task_cases("fx_planted_ifeval", task, samples, lm)
    assert sorted(c.doc_id for c in built.cases) == list(range(len(PLANTED)))
    for case in built.cases:
        doc, response, violation = PLANTED[case.doc_id]
        assert case.status == "pending", case.skip_reason
        # the violation's first visible character lies in the model's token at the contrast
        v = response.index(violation) + len(violation) - len(violation.lstrip())
        j = case.built["contrast"]["generated_prefix"]
        prefix = lm.tok_decode(list(case.token_ids[len(case.token_ids) - j:]))
        wrong = lm.tok_decode([case.wrong_token_id])
        assert response.startswith(prefix + wrong)
        assert len(prefix) <= v < len(prefix) + len(wrong), (prefix, wrong, violation)
        assert task.process_results(doc, [case.gold_text])["prompt_level_strict_acc"]
        assert case.gold_text.startswith(prefix) and not case.gold_text.startswith(prefix + wrong)
        (result,) = explain(lm.model, [case.objective], "attnlrp")
        assert result.delta > 0


def test_common_prefix_equals_a_character_scan():
    import random

    from harness_xai.contrast.scoring import common_prefix

    rng = random.Random(0)
    for _ in range(3000):
        a, b = ("".join(rng.choice("ab\u00e9") for _ in range(rng.randint(0, 9))) for _ in range(2))
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        assert common_prefix(a, b) == n, (a, b)


def test_a_repair_that_raises_is_a_reasoned_skip_not_a_lost_run():
    """A doc whose kwargs lack an argument (``keywords`` missing) makes the repair raise:
    ``propose_edits`` returns the skip ``repair-failed`` with the error; the choice among edits
    turns a scorer that raises into the same skip, and only scores edits above the floor."""
    from harness_xai.contrast.instructions import MAX_VERIFIED, closest_accepted, propose_edits

    text = " a river, here"
    dec = ["", " a", " a river", " a river,", text]
    broken = propose_edits(sample(["keywords:existence"], [{}], [False]),
                           "prompt_level_strict_acc", text, dec, text)
    assert broken.reason == "repair-failed" and "KeyError" in broken.error
    assert broken.notes()["error"] == broken.error
    fine = propose_edits(sample(["punctuation:no_comma"], [{}], [False]),
                         "prompt_level_strict_acc", text, dec, text)
    assert fine.texts == (" a river here",) and fine.reason is None

    def boom(_):
        raise ValueError("scorer")

    ranked = [(0.5, ("e1", [1], 0)), (0.7, ("e2", [2], 0))]
    assert closest_accepted(ranked, boom, "m")[2] == "repair-failed"
    seen = []
    chosen, info, reason = closest_accepted(
        [(-1.0, ("neg", [0], 0)), (0.0, ("tie", [0], 0))] + ranked,
        lambda e: seen.append(e) or e == "e2", "m")
    assert chosen == ("e2", [2], 0) and reason is None and seen == ["e1", "e2"]
    assert info == {"near_ties": 2, "verified": 2}
    assert closest_accepted([(0.0, ("tie", [0], 0))], lambda e: True, "m")[2] == "near-tie"
    many = [(1.0 + i, (f"e{i}", [i], 0)) for i in range(MAX_VERIFIED + 5)]
    assert closest_accepted(many, lambda e: False, "m")[1:] == (
        {"near_ties": 0, "verified": MAX_VERIFIED}, "no-compliant-edit:m")
