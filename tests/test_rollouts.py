"""First-error localisation by top-k rollouts (harness_xai/contrast/rollouts.py).

Oracles: a scorer that accepts one planted (position, alternative) must be found exactly there;
batched left-padded rollouts equal one-at-a-time rollouts and an explicit no-cache greedy loop
(exact ids); the budget bounds rollouts and their length; the scorer built from a real task config
agrees with that task's own scoring."""

from __future__ import annotations

import pytest
import torch

from harness_xai.contrast.rollouts import NO_FLIP, first_error, greedy_continue, task_scorer
from harness_xai.errors import UserError
from tiny_models import random_ids, tiny_model

EOS = (2,)


class IdsText:
    """Stand-in tokenizer: a generation's text is its ids, so scorers can check exact tokens."""

    pad_token_id = 0

    @staticmethod
    def decode(ids):
        return " ".join(str(i) for i in ids)


def _reference_greedy(model, row, n, eos=EOS):
    seq, out = list(row), []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            if nxt in eos:
                break
            out.append(nxt)
            seq.append(nxt)
    return out


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama", attn="eager", seed=3)
    prompt = random_ids(10, seed=5)[0].tolist()
    generated = _reference_greedy(model, prompt, 12, eos=())
    with torch.no_grad():
        logits = model(torch.tensor([prompt + generated])).logits[0, len(prompt) - 1:-1]
    ranked = logits.argsort(dim=-1, descending=True)
    assert len(generated) == 12 and ranked[:, 0].tolist() == generated
    return model, prompt, generated, ranked


def _accepts(generated, pairs):
    def score(text):
        ids = [int(i) for i in text.split()]
        return any(len(ids) > p and ids[:p] == generated[:p] and ids[p] == a for p, a in pairs)
    return score


def _run(model, prompt, generated, score, **kw):
    kw = {"top_k": 4, "max_rollouts": 64, "max_rollout_tokens": 6, "eos_token_id": EOS, **kw}
    return first_error(model, IdsText(), prompt, generated, score, **kw)


def test_finds_the_planted_position_and_not_an_earlier_one(setup):
    model, prompt, generated, ranked = setup
    alt = int(ranked[6, 1])
    result = _run(model, prompt, generated, _accepts(generated, [(6, alt)]))
    assert (result.position, result.model_token, result.alternative) == (6, generated[6], alt)
    assert result.reason is None and result.found
    hits = [i for i, r in enumerate(result.rollouts) if r.correct]
    assert len(hits) == 1 and len(result.rollouts) - 1 - hits[0] < 8  # the rest of its batch only
    assert {r.position for r in result.rollouts if r.position < 6} == set(range(6))  # all tried
    # two flips: the earlier position wins; at it, the highest-ranked correct alternative
    pairs = [(9, int(ranked[9, 1])), (3, int(ranked[3, 3])), (3, int(ranked[3, 2]))]
    result = _run(model, prompt, generated, _accepts(generated, pairs))
    assert (result.position, result.alternative) == (3, int(ranked[3, 2]))


def test_batched_rollouts_equal_one_at_a_time_and_a_plain_greedy_loop(setup):
    model, prompt, generated, ranked = setup
    never = lambda text: False  # noqa: E731
    one = _run(model, prompt, generated, never, max_rollouts=21, batch_size=1)
    many = _run(model, prompt, generated, never, max_rollouts=21, batch_size=8)
    assert one.reason == many.reason == NO_FLIP and len(one.rollouts) == 21
    assert [(r.position, r.alternative, r.ids) for r in one.rollouts] == \
           [(r.position, r.alternative, r.ids) for r in many.rollouts]
    assert len({r.position for r in many.rollouts}) == 7  # rows of 7 lengths share each batch
    for r in many.rollouts:
        prefix = generated[:r.position] + [r.alternative]
        assert list(r.ids) == prefix + _reference_greedy(model, prompt + prefix, 6)
        assert r.alternative == int(ranked[r.position, r.rank]) and r.rank >= 1


def test_budget_and_margin_ranking(setup):
    model, prompt, generated, _ = setup
    result = _run(model, prompt, generated, lambda t: False, max_rollouts=5, max_rollout_tokens=3)
    assert len(result.rollouts) == 5 and result.reason == NO_FLIP and not result.found
    lowest = sorted(range(len(generated)), key=lambda t: (result.margins[t], t))[:2]
    assert result.candidates == tuple(sorted(lowest))  # ceil(5 / 3 alternatives) positions
    assert {r.position for r in result.rollouts} <= set(result.candidates)
    assert all(len(r.ids) - r.position - 1 <= 3 for r in result.rollouts)
    assert all(m >= 0 for m in result.margins)


def test_rollouts_stay_within_the_generations_budget_and_the_window(setup):
    """``max_generated``: a rollout at t continues at most max_generated − t − 1 tokens (the
    generation's own budget), batched or not, exactly the plain greedy loop's tokens;
    ``max_length``: no row grows past the model's window."""
    model, prompt, generated, _ = setup
    never = lambda text: False  # noqa: E731
    kw = {"max_rollouts": 24, "max_rollout_tokens": 5, "max_generated": 12}
    batched = _run(model, prompt, generated, never, batch_size=8, **kw)
    single = _run(model, prompt, generated, never, batch_size=1, **kw)
    assert [r.ids for r in batched.rollouts] == [r.ids for r in single.rollouts]
    assert max(r.position for r in batched.rollouts) >= 8  # some rows hit the budget, not 5
    for r in batched.rollouts:
        prefix = generated[:r.position] + [r.alternative]
        n = min(5, 12 - r.position - 1)
        assert list(r.ids) == prefix + _reference_greedy(model, prompt + prefix, n)
    window = len(prompt) + 9
    capped = _run(model, prompt, generated, never, max_rollouts=24, max_rollout_tokens=6,
                  max_length=window)
    for r in capped.rollouts:  # rows already past the window (t large) get no new tokens
        assert len(prompt) + len(r.ids) <= window or len(r.ids) == r.position + 1
    assert any(len(r.ids) > r.position + 1 for r in capped.rollouts)


def test_a_shared_memo_reuses_continuations_across_scorers(setup, monkeypatch):
    """Two filters of one document: the second scorer sees the same rollouts, generating none."""
    import harness_xai.contrast.rollouts as rollouts

    model, prompt, generated, ranked = setup
    memo: dict = {}
    first = _run(model, prompt, generated, lambda text: False, max_rollouts=12, memo=memo)
    assert len(memo) == 12
    calls = []
    real = rollouts.greedy_continue
    monkeypatch.setattr(rollouts, "greedy_continue", lambda *a, **k: calls.append(1) or real(*a, **k))
    target = first.rollouts[5]
    second = _run(model, prompt, generated, lambda text: text == target.text, max_rollouts=12,
                  memo=memo)
    assert calls == [] and [r.ids for r in second.rollouts] == [r.ids for r in first.rollouts[:8]]
    assert (second.position, second.alternative) == (target.position, target.alternative)


def test_greedy_continue_stops_at_eos_and_handles_one_row(setup):
    model, prompt, _, _ = setup
    for eos in ((), EOS):
        rows = [prompt, prompt[:4], prompt[2:9]]
        batched = greedy_continue(model, rows, 8, 0, eos)
        assert batched == [_reference_greedy(model, r, 8, eos) for r in rows]
        assert [greedy_continue(model, [r], 8, 0, eos)[0] for r in rows] == batched


def test_task_scorer_is_the_tasks_own_scoring(generative_run, tmp_path):
    tasks = generative_run.tasks
    docs = {name: list(task.eval_docs) for name, task in tasks.items()}
    mmlu = task_scorer(tasks["fx_mmlu_pro_biology"], docs["fx_mmlu_pro_biology"][0])
    assert mmlu("So the answer is (E).") and not mmlu("So the answer is (A).") and not mmlu("E")
    doc = docs["fx_humaneval"][0]
    code = task_scorer(tasks["fx_humaneval"], doc)
    assert code(doc["canonical_solution"]) and not code("    return a * b\n")
    math_ = task_scorer(tasks["fx_minerva_math_algebra"], docs["fx_minerva_math_algebra"][1])
    assert math_("Final Answer: The final answer is $6$. I hope it is correct.")
    assert not math_("Final Answer: The final answer is $18$. I hope it is correct.")
    niah = task_scorer(tasks["fx_niah_single_1"], docs["fx_niah_single_1"][0])
    assert niah(" 4281937.") and not niah(" 4281936.")
    with pytest.raises(UserError, match="no filter 'strict'; supported: get-answer"):
        task_scorer(tasks["fx_bbh_cot_boolean_expressions"], {}, filter_name="strict")

    from lm_eval.tasks import TaskManager, get_task_dict

    from fixtures.lm_eval_tasks import write_tasks

    tm = TaskManager(include_path=str(write_tasks(tmp_path)), include_defaults=False)
    arc = get_task_dict(["fx_arc_easy"], tm)["fx_arc_easy"]
    with pytest.raises(UserError) as err:
        task_scorer(arc, {})
    assert "\n" not in str(err.value) and "'fx_arc_easy' is multiple_choice" in str(err.value)


def test_real_task_end_to_end_with_the_micro_model(generative_run):
    """Regenerate a logged babilong sample exactly, then localise with the task's own scorer on a
    doc whose gold is a word one of the model's alternatives leads to."""
    from fixtures.generative_run import MAX_GEN_TOKS

    lm = generative_run.lm
    task = generative_run.tasks["fx_babilong_qa1"]
    sample = generative_run.samples["fx_babilong_qa1"][0]
    doc = list(task.eval_docs)[sample["doc_id"]]
    prompt = lm.tok_encode(sample["arguments"][0][0])
    eos = (lm.tokenizer.eos_token_id,)
    generated = greedy_continue(lm.model, [prompt], MAX_GEN_TOKS, lm.tokenizer.pad_token_id or 0, eos)[0]
    assert lm.tok_decode(generated) == sample["resps"][0][0]  # the exact ids lm-eval generated
    with torch.no_grad():
        logits = lm.model(torch.tensor([prompt + generated])).logits[0, len(prompt) - 1:-1]
    ranked = logits.argsort(dim=-1, descending=True)[:, :4].tolist()
    text = lm.tok_decode(generated).lower()
    word = next(w for t in range(len(generated)) for tok in ranked[t][1:]
                if len(w := lm.tok_decode([tok]).strip()) >= 2 and w.isalpha() and w.lower() not in text)
    score = task_scorer(task, {**doc, "target": word})
    assert not score(lm.tok_decode(generated))
    result = first_error(lm.model, lm.tokenizer, prompt, generated, score, top_k=4,
                         max_rollouts=3 * len(generated), max_rollout_tokens=MAX_GEN_TOKS, eos_token_id=eos)
    assert result.found, result.reason
    hit = next(r for r in result.rollouts if r.correct)
    assert (hit.position, hit.alternative) == (result.position, result.alternative)
    assert word.lower() in hit.text.lower() and result.model_token == generated[result.position]
    assert all(not r.correct for r in result.rollouts if r.position < result.position)
    assert {r.position for r in result.rollouts if r.position < result.position} == \
        set(range(result.position))  # every earlier position was tried


def test_rollout_text_is_post_processed_like_hflm(setup):
    """Reasoning up to the last think_end dropped first, then the stop strings (lm-eval's order)."""
    model, prompt, generated, _ = setup
    think_end, until = IdsText.decode(generated[1:3]), [IdsText.decode(generated[8:9])]
    seen = []
    result = _run(model, prompt, generated, lambda text: seen.append(text) or False,
                  max_rollouts=12, think_end=think_end, until=until)
    assert [r.text for r in result.rollouts] == seen and len(seen) == 12
    for r in result.rollouts:
        text = IdsText.decode(r.ids).split(think_end)[-1].lstrip()
        for stop in until:
            text = text.split(stop)[0]
        assert r.text == text
    assert any(r.position >= 3 and think_end not in r.text for r in result.rollouts)
