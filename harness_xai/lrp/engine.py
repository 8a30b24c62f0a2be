"""The one forward+backward of harness-xai: a batch of objectives explained in one pass.

``explain(model, objectives, method)`` is the only place that runs a model forward and backward
for attribution; ``attribute`` (one logit difference), the run's batched cases, sequence
contrasts and the graph's per-block capture are all calls of it. Objectives (``records``):
- ``TokenTarget(input_ids, target, foil)``: Δ = logit[target] − logit[foil] at the last position;
  one row of the batch.
- ``SequenceTarget``: Δ = w_w · Σ log p(wrong tokens) − w_g · Σ log p(gold tokens) over two
  windows; two rows (the wrong and the gold window).

Algorithm:
1. Rows: every objective's rows, right-padded to (R, n_max). Exact for causal decoders: a real
   token never sees a later one, so it gets the hidden states it would get alone (no mask, no
   position shift); every objective reads its own real positions only, so padding gets zero
   gradient. (Not exact for bidirectional attention or capacity-limited MoE routing; no
   supported family has either.)
2. Inside ``with lrp(model, method)`` embed the rows as one leaf that requires grad; hooks
   (``states.StateCapture``) note the residual after every block and, with ``states``, the
   mid-block residual, the attention/MLP branch outputs and each head's output. With ``trace``
   (one token objective, checkpointed or not) the graph's ``BlockTrace`` also keeps each block's
   call (its input and arguments), for the graph to re-run one block at a time. With
   ``checkpoint`` each block re-runs whole in the backward; the states are saved through probes
   the re-run recomputes (``states`` step 2), so they cost one block, not all blocks.
3. Forward: only token objectives → logits only at the rows' last real positions (a 1-D
   ``logits_to_keep`` of the distinct ones, sorted); otherwise all positions. Every supported
   family of every transformers version pyproject allows reads a 1-D tensor as
   ``hidden[:, keep, :]`` (4.56: ``slice_indices``; 5.x: ``slice_logits_to_keep``), giving
   (R, k, vocab). A 2-D tensor is read differently across versions (5.x: per-row positions
   with ``take_along_dim``; 4.56 … early 5.x: ``hidden[:, keep2d, :]``, (R, R, 1, d)), which
   is how an older (R, 1) ``keep`` indexed past a size-1 dimension — a CUDA device-side assert
   reported in the backward. Checked before the model runs: every input id and kept position is
   in range (0 ≤ position < n_max); after it: the logits have shape (R, k, vocab), so the rows'
   column indices are in range too. Objective values in fp32; Δ = their sum.
4. One backward of Σ Δ (rows are independent, so row r's gradient is its own objective's). As
   the gradient passes each noted state its relevance Σ_hidden state ⊙ gradient is reduced per
   row and the gradient dropped. With ``trace`` the same backward also returns the gradients at
   the block outputs (``BlockTrace.finish``): no second pass of the model.
5. Each objective's ``Attribution``: its row's first n positions. A sequence objective stores the
   wrong window's input; on the positions both windows share (same tokens, same hidden states)
   the gold row's relevance is added; the gold row's relevance on its own remaining tokens goes
   to ``params["gold_relevance"]``, so nothing is dropped.
6. ``integrated-gradients`` runs steps 2–4 on chunks of points along the path from a baseline to
   the input (``integrated``), one token objective at a time, with the trapezoid rule.
bf16/fp16 models run in their own dtype; Δ and every relevance sum are fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from harness_xai.errors import UserError
from harness_xai.lrp import integrated
from harness_xai.lrp.adapters import adapter_for
from harness_xai.lrp.blocktrace import BlockTrace, Trace
from harness_xai.lrp.inputs import check_vocabulary, frozen_parameters, input_device
from harness_xai.lrp.methods import Method, get_method
from harness_xai.lrp.patch import lrp
from harness_xai.lrp.states import ALL_KINDS, STATE_KINDS, StateCapture, lrp_pair, trapezoid_pair
from harness_xai.records import Objective, SequenceTarget, TokenTarget


@dataclass
class Attribution:
    """Relevance of the input tokens and internal states for one objective's Δ."""

    tokens: torch.Tensor  # (n_tokens,) relevance per input position, fp32
    layers: torch.Tensor  # (n_layers + 1, n_tokens): embeddings, then each block's output
    delta: float  # the objective's value, e.g. logit[target] − logit[foil] at the last position
    method: str
    input_ids: torch.Tensor  # (n_tokens,)
    target_id: int
    foil_id: int
    params: dict = field(default_factory=dict)
    #: kind → (n_layers, n_tokens), row l-1 = block l: "mid" (residual between attention and MLP;
    #: absent for parallel-residual blocks), "attn" / "mlp" (branch outputs added to the residual)
    states: dict[str, torch.Tensor] = field(default_factory=dict)
    heads: torch.Tensor | None = None  # (n_layers, n_heads, n_tokens) each head's output
    #: mixture of experts: (n_layers, n_experts, n_tokens) relevance of each routed expert's
    #: weighted output (0 where not selected; dense layers 0); None for dense models
    experts: torch.Tensor | None = None
    trace: Trace | None = field(default=None, repr=False)  # the graph's capture (``trace=True``)

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens (n,), layers (n_layers + 1, n)) as float32 numpy arrays."""
        return self.tokens.numpy().astype(np.float32), self.layers.numpy().astype(np.float32)

    def to_html(self, tokenizer=None, max_tokens: int = 2000) -> str:
        """A token heatmap (self-contained HTML, no script): red pushes toward ``target``, blue
        toward ``foil``, each scaled by the largest |relevance|; hover shows position, exact
        token and value. Token text comes from ``tokenizer`` (else the ids) and is escaped."""
        import html

        rel = self.tokens.float()
        scale = float(rel.abs().max()) or 1.0
        ids = self.input_ids.tolist()
        spans = []
        for i, (tok, r) in enumerate(zip(ids[-max_tokens:], rel[-max_tokens:].tolist())):
            text = tokenizer.decode([tok]) if tokenizer is not None else f"[{tok}]"
            a = min(abs(r) / scale, 1.0)
            colour = f"rgba(220,40,40,{a:.3f})" if r > 0 else f"rgba(40,90,220,{a:.3f})"
            shown = html.escape(text).replace(" ", "&nbsp;").replace("\n", "↵<br>") or "∅"
            title = html.escape(f"{i}: {text!r} {r:+.4g}", quote=True)
            spans.append(f'<span style="background:{colour}" title="{title}">{shown}</span>')
        head = html.escape(f"{self.method}: Δ = {self.delta:.4g} (target {self.target_id} vs "
                           f"foil {self.foil_id}), {len(ids)} tokens; red → target, blue → foil")
        return (f'<div style="font-family:monospace;line-height:1.6"><div>{head}</div>'
                f'<div>{"".join(spans)}</div></div>')

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        top = self.tokens.abs().argsort(descending=True)[:3].tolist()
        parts = ", ".join(f"{i}: {self.tokens[i].item():+.3g}" for i in top)
        extra = (f", states={sorted(self.states)}" if self.states else "") + (
            f", heads={tuple(self.heads.shape)}" if self.heads is not None else "")
        return (f"Attribution(method={self.method!r}, delta={self.delta:.4g}, "
                f"n_tokens={self.tokens.numel()}, n_layers={self.layers.shape[0] - 1}, "
                f"target_id={self.target_id}, foil_id={self.foil_id}, "
                f"top=[{parts}]{extra})")


def explain(model: nn.Module, objectives: Sequence[Objective], method: str | Method = "attnlrp",
            *, states: bool = True, trace: bool = False, checkpoint: bool = False,
            **options) -> list[Attribution]:
    """One ``Attribution`` per objective, from one forward and one backward (module docstring).

    ``states=False`` skips the mid/attn/mlp/head relevance; ``trace=True`` (one token objective)
    also returns the graph's per-block capture; ``checkpoint=True`` recomputes each block in the
    backward (less memory, one more forward); ``options`` set the method's tunable params (e.g.
    ``steps=64`` for integrated-gradients).
    """
    spec = get_method(method) if isinstance(method, str) else method
    params = spec.configure(options)
    adapter = adapter_for(model)  # fails before any work for unsupported families
    if not objectives:
        return []
    _check(model, objectives, spec, trace, checkpoint)
    kinds = ALL_KINDS if states else ("out",)
    with torch.inference_mode(False), torch.enable_grad(), frozen_parameters(model), \
            lrp(model, spec, checkpoint), _full_recompute(checkpoint):
        if spec.integrate:
            return [_integrated(model, adapter, spec, params, o, kinds, checkpoint)
                    for o in objectives]
        rows = [r for o in objectives for r in _rows(o)]  # (R,) input ids per row
        ids = _pad(rows, input_device(model))  # (R, n_max)
        embeddings = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        with StateCapture(model, adapter, kinds, lrp_pair, checkpointed=checkpoint) as capture:
            tracer = BlockTrace(model, adapter, spec) if trace else None
            deltas, grads = _pass(model, capture, tracer, embeddings, objectives, rows)
            relevance = _relevance(capture, embeddings, grads[0], len(rows), ids.shape[1], states)
    traced = (None if tracer is None
              else tracer.finish(embeddings.detach(), grads, float(deltas[0])))
    out, row = [], 0
    for objective, delta in zip(objectives, deltas):
        width = 2 if isinstance(objective, SequenceTarget) else 1
        out.append(_result(objective, delta, relevance, row, spec, params, states))
        row += width
    if traced is not None:
        out[0].trace = traced
    return out


def batchable(model: nn.Module, method: str | Method) -> bool:
    """Several objectives may share a pass: a one-backward method on a model on one device (the
    last hidden states of a multi-device ``device_map`` model live on its last device)."""
    devices = set((getattr(model, "hf_device_map", None) or {}).values())
    return not get_method(method).integrate and len(devices) <= 1


def _full_recompute(checkpoint: bool):
    """Checkpointed blocks re-run whole in the backward (no early stop), so every state hook and
    expert note of the block sees its recomputed value (``states`` step 2)."""
    if not checkpoint:
        return contextlib.nullcontext()
    from torch.utils.checkpoint import set_checkpoint_early_stop

    return set_checkpoint_early_stop(False)


def _check(model, objectives, spec: Method, trace: bool, checkpoint: bool) -> None:
    n_embeddings = model.get_input_embeddings().weight.shape[0]
    for o in objectives:
        if o.n_tokens < 1:
            raise UserError("an objective needs at least one input token.")
        ids = [t for row in _rows(o) for t in row] + (
            [] if isinstance(o, TokenTarget) else [o.wrong_ids[-1], o.gold_ids[-1]])
        if min(ids) < 0 or max(ids) >= n_embeddings:  # on CUDA: a device-side assert later
            bad = min(ids) if min(ids) < 0 else max(ids)
            raise UserError(f"token id {bad} is outside the model's input embeddings "
                            f"(0..{n_embeddings - 1}); tokenizer and model do not match.")
        if isinstance(o, TokenTarget):
            check_vocabulary(model, {"target_id": o.target, "foil_id": o.foil})
        elif spec.integrate:
            raise UserError(f"sequence contrasts do not support method {spec.name!r}; use "
                            "attnlrp, cp-lrp or grad-x-input, or --xai-contrast token.")
        else:
            check_vocabulary(model, {"scored token id": max(ids)})
    if trace and (len(objectives) != 1 or not isinstance(objectives[0], TokenTarget)
                  or spec.integrate):
        raise UserError("the graph's capture needs one token contrast and a one-backward method "
                        "(attnlrp, cp-lrp, grad-x-input).")


def _rows(objective: Objective) -> list[tuple[int, ...]]:
    if isinstance(objective, SequenceTarget):
        return [objective.wrong_ids[:-1], objective.gold_ids[:-1]]
    return [tuple(objective.input_ids)]


def _pad(rows: list[tuple[int, ...]], device) -> torch.Tensor:
    ids = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return ids.to(device)


def _pass(model, capture: StateCapture, tracer: BlockTrace | None, embeddings, objectives,
          rows) -> tuple[list[float], tuple]:
    """Steps 3–4: Δ per objective and the gradients (embeddings first, then the trace's)."""
    lengths = [len(r) for r in rows]
    tokens_only = all(isinstance(o, TokenTarget) for o in objectives)
    keep: int | torch.Tensor = 0  # all positions
    column = {}  # row → index of its last real position among the kept ones
    if tokens_only and len(set(lengths)) == 1:
        keep, column = 1, {r: 0 for r in range(len(rows))}
    elif tokens_only:  # a 1-D tensor keeps these positions in every row (every transformers)
        last = sorted({k - 1 for k in lengths})  # (k,) distinct last positions
        keep = _kept_positions(last, embeddings.shape[1], embeddings.device)
        column = {r: last.index(k - 1) for r, k in enumerate(lengths)}
    capture.recording = True
    try:
        if tracer is None:
            logits = model(inputs_embeds=embeddings, use_cache=False, logits_to_keep=keep).logits
        else:
            with tracer:
                logits = model(inputs_embeds=embeddings, use_cache=False,
                               logits_to_keep=keep).logits
    finally:
        capture.recording = False  # forwards re-run by checkpointing are not recorded
    if isinstance(keep, torch.Tensor) and tuple(logits.shape[:2]) != (len(rows), keep.numel()):
        raise RuntimeError(f"the model read logits_to_keep (1-D, {keep.numel()} positions) as "
                           f"logits of shape {tuple(logits.shape)}, not ({len(rows)}, "
                           f"{keep.numel()}, vocab): unsupported transformers slicing.")
    values, row = [], 0
    for o in objectives:
        if isinstance(o, TokenTarget):
            last = logits[row, column[row] if tokens_only else lengths[row] - 1].float()  # (vocab,)
            values.append(last[o.target] - last[o.foil])
            row += 1
        else:
            values.append(_sequence_value(logits, row, o))
            row += 2
    total = torch.stack(values)  # (n_objectives,)
    extra: list[torch.Tensor] = []
    if tracer is not None:
        capture.paused = True  # the linear-part probes are backward passes too
        try:
            extra = tracer.backward_inputs(embeddings)
        finally:
            capture.paused = False
    grads = torch.autograd.grad(total.sum(), [embeddings, *extra], allow_unused=bool(extra))
    capture.done()
    return [float(v) for v in total.detach().cpu()], grads


def _kept_positions(last: list[int], n: int, device) -> torch.Tensor:
    """Step 3's ``logits_to_keep``: (k,) long, strictly increasing, each in [0, n)."""
    if not last or last[0] < 0 or last[-1] >= n or any(a >= b for a, b in zip(last, last[1:])):
        raise RuntimeError(f"kept positions {last} are not increasing within [0, {n})")
    return torch.tensor(last, dtype=torch.long, device=device)


def _sequence_value(logits: torch.Tensor, row: int, o: SequenceTarget) -> torch.Tensor:
    """w_w · Σ log p(wrong scored tokens) − w_g · Σ log p(gold scored tokens), fp32."""
    total = None
    for r, ids, start, weight in ((row, o.wrong_ids, o.wrong_from, o.wrong_weight),
                                  (row + 1, o.gold_ids, o.gold_from, -o.gold_weight)):
        logprobs = torch.log_softmax(logits[r, start - 1: len(ids) - 1].float(), -1)  # (m, vocab)
        scored = torch.tensor(ids[start:], dtype=torch.long, device=logits.device)  # (m,)
        part = logprobs.gather(1, scored[:, None]).sum() * weight
        total = part if total is None else total + part
    return total


def _relevance(capture: StateCapture, embeddings, grad, n_rows: int, n: int,
               states: bool) -> dict[str, torch.Tensor]:
    """kind → per-row relevance: "layers" (R, L + 1, n), "mid"/"attn"/"mlp" (R, L, n), "heads"
    (R, L, H, n), "experts" (R, L, E, n) for a mixture of experts."""
    tokens = lrp_pair(embeddings.detach(), grad).sum(2).cpu()  # (R, n)
    out = {"layers": torch.cat([tokens[:, None], capture.stacked("out", n_rows, n)], 1)}
    if states:
        for kind in (*STATE_KINDS, "heads"):
            if kind in capture.present:
                out[kind] = capture.stacked(kind, n_rows, n)
        experts = capture.expert_rows(n_rows, n)  # (R, L, E, n) or None
        if experts is not None:
            out["experts"] = experts
    return out


def _result(objective: Objective, delta: float, relevance: dict, row: int, spec: Method,
            params: dict, states: bool) -> Attribution:
    """Step 5."""
    params = dict(params)
    if isinstance(objective, TokenTarget):
        n = objective.n_tokens
        take = {k: v[row, ..., :n].clone() for k, v in relevance.items()}
        ids, target, foil = objective.input_ids, objective.target, objective.foil
    else:
        n, shared = objective.n_tokens, objective.shared
        take = {}
        for kind, value in relevance.items():
            mine = value[row, ..., :n].clone()
            mine[..., :shared] += value[row + 1, ..., :shared]
            take[kind] = mine
        gold_rest = relevance["layers"][row + 1, 0, shared: len(objective.gold_ids) - 1]
        params.update(contrast="sequence", gold_tokens=list(objective.gold_ids[shared:-1]),
                      gold_relevance=[float(x) for x in gold_rest])
        ids, target = objective.wrong_ids[:-1], objective.wrong_ids[objective.wrong_from]
        foil = objective.gold_ids[objective.gold_from]
    layers = take.pop("layers")
    result = Attribution(tokens=layers[0].clone(), layers=layers, delta=delta, method=spec.name,
                         input_ids=torch.as_tensor(ids, dtype=torch.long), target_id=int(target),
                         foil_id=int(foil), params=params)
    if states:
        result.states = {k: take[k] for k in STATE_KINDS if k in take}
        result.heads = take.get("heads")
        result.experts = take.get("experts")
    return result


def _integrated(model, adapter, spec: Method, params: dict, objective: TokenTarget,
                kinds, checkpoint: bool) -> Attribution:
    """Step 6: steps 2–4 on chunks of path points (``integrated.path_chunks``)."""
    ids = _pad([tuple(objective.input_ids)], input_device(model))  # (1, n)
    embeddings = model.get_input_embeddings()(ids).detach()  # (1, n, d)
    n = ids.shape[1]
    rule = integrated.Path(model, embeddings, params)
    with StateCapture(model, adapter, kinds, trapezoid_pair, sum_rows=True,
                      checkpointed=checkpoint) as capture:
        for path in rule.chunks():  # (b, n, d) leaves
            one = [objective] * path.shape[0]
            deltas, (grad,) = _pass(model, capture, None, path, one, [objective.input_ids] * len(one))
            rule.add(path, grad, deltas)
        layers = torch.cat([rule.tokens[None], capture.stacked("out", 1, n)[0]])
        extra = {k: capture.stacked(k, 1, n)[0] for k in (*STATE_KINDS, "heads")
                 if k in capture.present and k in kinds}
    params = {**params, "baseline_delta": rule.start_delta}
    result = Attribution(tokens=layers[0].clone(), layers=layers, delta=rule.end_delta,
                         method=spec.name, input_ids=ids[0].cpu(), target_id=objective.target,
                         foil_id=objective.foil, params=params)
    if "mid" in kinds:
        result.states = {k: extra[k] for k in STATE_KINDS if k in extra}
        result.heads = extra.get("heads")
    return result
