"""Deletion curves and AOPC: step sizes, batched == brute force, BOS protection, and an oracle
model where one token decides the logit."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_models import random_ids, tiny_model

from harness_xai import attribute
from harness_xai.errors import UserError
from harness_xai.faithfulness import (DeletionCase, baseline_token, deletion_curves,
                                      deletion_steps, orders, with_faithfulness)
from harness_xai.records import PENDING, Case, Explanation, SequenceTarget

BOS, PAD = 1, 0


def test_deletion_steps_round_dedupe_and_clip():
    assert deletion_steps(20) == ([0.01, 0.10, 0.20, 0.30, 0.50], [1, 2, 4, 6, 10])
    assert deletion_steps(200)[1] == [2, 4, 10, 20, 40, 60, 100]
    assert deletion_steps(5) == ([0.01, 0.30, 0.50], [1, 2, 3])  # halves round up: 1.5→2, 2.5→3
    assert deletion_steps(1) == ([0.01], [1])
    assert deletion_steps(0) == ([], [])


def _cases(model, lengths, method="attnlrp"):
    cases = []
    for i, n in enumerate(lengths):
        ids = random_ids(n, seed=10 + i)[0]
        ids[0] = BOS
        ids[ids == PAD] = 3  # keep the replacement token out of the inputs
        result = attribute(model, None, ids, 4 + i, 9, method=method)
        cases.append(DeletionCase(ids.tolist(), result.tokens.numpy(), 4 + i, 9))
    return cases


def _delta(model, ids, target, foil):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    return (logits[target] - logits[foil]).item()


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # RoPE and absolute positions
def test_batched_curves_equal_a_brute_force_loop(family):
    model = tiny_model(family)
    cases = _cases(model, [6, 13, 21])
    got = deletion_curves(model, cases, baseline_token_id=PAD, bos_token_id=BOS, n_random=2,
                          seed=5, batch_size=3)
    for case, result in zip(cases, got):
        ids = np.array(case.token_ids)
        d0 = _delta(model, ids.tolist(), case.target_id, case.foil_id)
        candidates = [i for i in range(len(ids)) if ids[i] != BOS]
        by_relevance = sorted(candidates, key=lambda i: (-case.relevance[i], i))
        _, randoms = orders(case, BOS, 2, 5)  # the seeded permutations themselves
        assert sorted(randoms[0].tolist()) == candidates
        fractions, ks = deletion_steps(len(candidates))
        assert result.n_removed == ks and result.fractions == fractions
        curve, random_curve = [], []
        for k in ks:
            for order, sink in [(by_relevance, None)] + [(r, []) for r in randoms]:
                changed = ids.copy()
                changed[list(order[:k])] = PAD
                value = _delta(model, changed.tolist(), case.target_id, case.foil_id)
                curve.append(value) if sink is None else random_curve.append(value)
        random_mean = np.array(random_curve).reshape(len(ks), 2).mean(1)
        np.testing.assert_allclose(result.delta_relevance, curve, rtol=0, atol=1e-5)
        np.testing.assert_allclose(result.delta_random, random_mean, rtol=0, atol=1e-5)
        assert result.params["delta_full"] == pytest.approx(d0, abs=1e-5)
        share = lambda d: min(1.0, max(-1.0, (d0 - d) / abs(d0)))  # noqa: E731
        assert result.aopc == pytest.approx(np.mean([share(d) for d in curve]),
                                            rel=1e-4, abs=1e-5)
        assert result.aopc_random == pytest.approx(
            np.mean([share(d) for d in random_mean]), rel=1e-4, abs=1e-5)
        assert -1 <= result.aopc <= 1 and -1 <= result.aopc_random <= 1
        assert result.baseline_token_id == PAD
        assert result.params["forwards_per_case"] == 1 + 3 * len(ks)


def test_batched_equals_unbatched_and_bos_is_never_replaced():
    model = tiny_model("gpt_neox")
    cases = _cases(model, [5, 16, 9, 24, 11])
    rows_seen = []
    forward = model.forward

    def recording(input_ids=None, attention_mask=None, **kwargs):
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            rows_seen.append(ids[mask.index(1):])
        return forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    model.forward = recording
    together = deletion_curves(model, cases, baseline_token_id=PAD, bos_token_id=BOS)
    del model.forward
    alone = [deletion_curves(model, [c], baseline_token_id=PAD, bos_token_id=BOS)[0]
             for c in cases]
    for a, b in zip(together, alone):
        assert a.n_removed == b.n_removed
        np.testing.assert_allclose(a.delta_relevance, b.delta_relevance, atol=1e-5, rtol=0)
        np.testing.assert_allclose(a.delta_random, b.delta_random, atol=1e-5, rtol=0)
        assert a.aopc == pytest.approx(b.aopc, rel=1e-4, abs=1e-5)  # Δℓ₀ can be small
    assert len(rows_seen) == len(cases) + sum(len(r.n_removed) * 4 for r in together)
    assert all(row[0] == BOS for row in rows_seen)
    assert any(PAD in row for row in rows_seen)


class BagModel(torch.nn.Module):
    """A constructed model: logit[1] − logit[0] = Σ over real positions of score[token]."""

    def __init__(self, scores):
        super().__init__()
        self.scores = torch.nn.Parameter(torch.as_tensor(scores, dtype=torch.float32))

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        total = (self.scores[input_ids] * mask).sum(-1)  # (B,)
        logits = torch.stack([torch.zeros_like(total), total], -1)  # (B, 2)
        return SimpleNamespace(logits=logits[:, None])


def test_one_deciding_token_drops_the_relevance_curve_far_faster_than_random():
    rng = np.random.default_rng(0)
    scores = rng.normal(0, 0.01, 50)
    scores[PAD], scores[7] = 0.0, 10.0  # token 7 decides; one token pushes the other way
    scores[8] = -2.0
    model = BagModel(scores)
    ids = rng.integers(10, 50, 60)
    ids[0], ids[23], ids[41] = BOS, 7, 8
    relevance = scores[ids]  # exact contributions of this linear model
    case = DeletionCase(ids.tolist(), relevance, 1, 0)
    (result,) = deletion_curves(model, [case], baseline_token_id=PAD, bos_token_id=BOS,
                                n_random=8)
    d0 = result.params["delta_full"]
    assert d0 == pytest.approx(scores[ids].sum(), rel=1e-5)
    assert result.delta_relevance[0] < 0.1 * d0  # the first token removed is the deciding one
    assert result.delta_random[0] > 0.8 * d0
    assert result.aopc > 0.95
    assert result.aopc_random < 0.6
    assert result.aopc - result.aopc_random > 0.4
    # the token pushing toward the gold answer comes last in the relevance order
    assert orders(case, BOS, 1, 0)[0][-1] == 41


def _explained(ids, relevance, contrast="token"):
    built = {} if contrast == "token" else {"contrast": {"target": SequenceTarget(
        list(ids) + [5], len(ids), list(ids) + [9], len(ids)).to_params()}}
    case = Case(task="t", doc_id=0, doc_hash="h", prompt_hash="p", target_hash="g",
                filter="none", metric="acc", status=PENDING, token_ids=tuple(ids),
                wrong_token_id=5, gold_token_id=9, contrast=contrast, built=built)
    return case, Explanation(method="attnlrp", delta=1.0, token_relevance=relevance,
                             layer_relevance=relevance[None])


def test_with_faithfulness_on_explained_cases():
    model = tiny_model("llama")
    ids = random_ids(15)[0]
    ids[0] = BOS
    result = attribute(model, None, ids, 5, 9)
    attributed = _explained(ids.tolist(), result.tokens.numpy())
    skipped = (attributed[0].skipped("tie-with-gold"), None)
    sequence = _explained(ids.tolist(), result.tokens.numpy(), contrast="sequence")
    tokenizer = SimpleNamespace(pad_token_id=None, unk_token_id=None, eos_token_id=2,
                                bos_token_id=BOS)
    done = with_faithfulness([attributed, skipped, sequence], model, tokenizer)
    assert [c for c, _ in done] == [attributed[0], skipped[0], sequence[0]]
    assert done[1] == skipped and done[2][1].faithfulness is None
    curve = done[0][1].faithfulness
    assert attributed[1].faithfulness is None  # the input is not changed
    assert curve.baseline_token_id == 2
    assert curve.n_removed == deletion_steps(14)[1]
    assert curve.params["delta_full"] == pytest.approx(result.delta, abs=1e-5)


def test_baseline_token_choice_and_errors():
    assert baseline_token(SimpleNamespace(pad_token_id=4, unk_token_id=3)) == 4
    assert baseline_token(SimpleNamespace(pad_token_id=None, unk_token_id=3)) == 3
    config = SimpleNamespace(config=SimpleNamespace(eos_token_id=[6, 7]))
    assert baseline_token(SimpleNamespace(), config) == 6
    assert baseline_token(SimpleNamespace(pad_token_id=4), override=11) == 11
    with pytest.raises(UserError, match="no pad, unk or eos"):
        baseline_token(SimpleNamespace(), SimpleNamespace(config=SimpleNamespace()))
    with pytest.raises(UserError, match="n_random >= 1"):
        deletion_curves(tiny_model("llama"), [], baseline_token_id=0, n_random=0)
