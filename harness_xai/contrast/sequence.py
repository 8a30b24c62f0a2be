"""Sequence-level contrast: relevance for the difference of two continuations' log-likelihoods.

The explained quantity (``--xai-contrast sequence``) is

    Δ = w_wrong · Σ_j log p(wrong_j | wrong_<j)  −  w_gold · Σ_j log p(gold_j | gold_<j)

over the scored tokens of two sequences — the predicted and the gold continuation, each after its
own context (the same context for ordinary multiple choice, different ones for multiple-input
tasks). The weights are 1 (``acc``) or 1 / len(choice text) (``acc_norm``), so Δ is exactly the
quantity lm-eval's decision compared (Δ ≥ 0 for a wrong prediction; = logged ll_pred − ll_gold).

``SequenceTarget`` is the target specification: both model windows (input = ids[:-1]), where the
scored tokens start, and the weights. It travels with the case in
``case.method_params["contrast"]["target"]`` (the gold sequence stored as the length of its
prefix shared with the wrong one plus the rest).

``attribute_sequence`` (on top of ``harness_xai.lrp.lrp`` and autograd; no engine change):
1. Embed both windows as separate leaves; inside ``with lrp(model, method)`` run the model on
   each with forward hooks noting every decoder block's output.
2. Δ from fp32 log-softmax of the logits at the scored positions.
3. One backward of Δ to both embedding leaves and all noted block outputs.
4. Relevance = Σ_hidden state ⊙ gradient, per pass. The stored tokens are the wrong window's
   input; on positions where both inputs hold the same token (their common prefix) the gold
   pass's relevance is added — it is the same input token, seen by both passes. The gold pass's
   relevance on its own remaining tokens goes to ``params["gold_relevance"]`` (one value per
   token of ``params["gold_tokens"]``), so nothing is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness_xai.errors import UserError


@dataclass
class SequenceTarget:
    wrong_ids: list[int]  # (n_w,) model window of the wrong sequence; input = wrong_ids[:-1]
    wrong_from: int  # index in wrong_ids of the first scored token (>= 1)
    gold_ids: list[int]  # (n_g,)
    gold_from: int
    wrong_weight: float = 1.0
    gold_weight: float = 1.0

    @property
    def shared(self) -> int:
        """Length of the common prefix of the two inputs (positions seen by both passes)."""
        a, b = self.wrong_ids[:-1], self.gold_ids[:-1]
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    def to_params(self) -> dict:
        n = self.shared
        return {"kind": "sequence", "wrong_last": self.wrong_ids[-1], "wrong_from": self.wrong_from,
                "wrong_weight": self.wrong_weight, "gold_shared": n,
                "gold_rest": self.gold_ids[n:], "gold_from": self.gold_from,
                "gold_weight": self.gold_weight}

    @classmethod
    def from_case(cls, token_ids: list[int], target: dict) -> SequenceTarget:
        wrong = list(token_ids) + [int(target["wrong_last"])]
        gold = list(token_ids[: int(target["gold_shared"])]) + [int(t) for t in target["gold_rest"]]
        return cls(wrong, int(target["wrong_from"]), gold, int(target["gold_from"]),
                   float(target["wrong_weight"]), float(target["gold_weight"]))


def attribute_sequence(model, target: SequenceTarget, method: str = "attnlrp"):
    """Relevance of ``target``'s Δ (see module doc) → ``harness_xai.lrp.Attribution``."""
    import torch

    from harness_xai.lrp import Attribution, adapter_for, get_method, lrp
    from harness_xai.lrp.attribute import input_device

    spec = get_method(method)
    if getattr(spec, "integrate", False):
        raise UserError(f"--xai-contrast sequence does not support method {spec.name!r}; use "
                        "attnlrp, cp-lrp or grad-x-input, or --xai-contrast token.")
    adapter = adapter_for(model)
    device = input_device(model)
    embed = model.get_input_embeddings()
    passes = ((target.wrong_ids, target.wrong_from, target.wrong_weight),
              (target.gold_ids, target.gold_from, -target.gold_weight))
    with torch.inference_mode(False), torch.enable_grad(), lrp(model, spec):
        leaves, states, delta = [], [], 0.0
        total = None
        for ids, start, weight in passes:
            inp = torch.tensor([ids[:-1]], dtype=torch.long, device=device)  # (1, n)
            emb = embed(inp).detach().requires_grad_(True)  # (1, n, d)
            noted: list = []
            hooks = [b.register_forward_hook(_note(noted)) for b in adapter.blocks(model)]
            try:
                logits = model(inputs_embeds=emb, use_cache=False).logits  # (1, n, vocab)
            finally:
                for hook in hooks:
                    hook.remove()
            logprobs = torch.log_softmax(logits[0].float(), -1)  # (n, vocab)
            scored = torch.tensor(ids[start:], dtype=torch.long, device=device)  # (m,)
            part = logprobs[start - 1: len(ids) - 1].gather(1, scored[:, None]).sum() * weight
            total = part if total is None else total + part
            leaves.append(emb)
            states.append(noted)
        grads = torch.autograd.grad(total, [leaves[0], *states[0], leaves[1], *states[1]])
        delta = float(total.detach())
    n_states = len(states[0])
    rel = []
    for k, (leaf, noted) in enumerate(zip(leaves, states)):
        g = grads[k * (1 + n_states): (k + 1) * (1 + n_states)]
        rows = [(h.detach().float() * gr.float()).sum(-1)[0] for h, gr in zip([leaf, *noted], g)]
        rel.append(torch.stack(rows).cpu())  # (L + 1, n_k)
    shared = target.shared
    layers = rel[0].clone()
    layers[:, :shared] += rel[1][:, :shared]
    gold_rest = rel[1][0, shared:]
    params = dict(spec.params)
    params.update(contrast="sequence", gold_tokens=list(target.gold_ids[shared:-1]),
                  gold_relevance=[float(x) for x in gold_rest])
    return Attribution(tokens=layers[0].clone(), layers=layers, delta=delta, method=spec.name,
                       input_ids=torch.tensor(target.wrong_ids[:-1]),
                       target_id=int(target.wrong_ids[target.wrong_from]),
                       foil_id=int(target.gold_ids[target.gold_from]), params=params)


def attribute_sequence_case(case, model, tokenizer, method: str = "attnlrp") -> None:
    """Attribute a ``contrast == "sequence"`` case in place (the pipeline's attribution step)."""
    from harness_xai.records import ATTRIBUTED

    target = SequenceTarget.from_case(case.token_ids, case.method_params["contrast"]["target"])
    result = attribute_sequence(model, target, method)
    case.token_relevance = result.tokens.numpy().astype(np.float32)
    case.layer_relevance = result.layers.numpy().astype(np.float32)
    case.delta = result.delta
    case.method = result.method
    case.method_params = {**result.params, **case.method_params}
    case.tokens = [tokenizer.decode([t]) for t in case.token_ids]
    if case.wrong_token_id is not None:
        case.wrong_token = tokenizer.decode([case.wrong_token_id])
    if case.gold_token_id is not None:
        case.gold_token = tokenizer.decode([case.gold_token_id])
    case.status = ATTRIBUTED


def _note(noted: list):
    def hook(module, inputs, output):
        noted.append(output[0] if isinstance(output, (tuple, list)) else output)
    return hook
