"""``--xai-batch-size auto``: how many token-contrast rows fit in one engine pass.

The estimate is an upper bound of one pass's peak memory above the weights (activations kept
for the backward, the captured states, the kept logits, the backward's transients):

    bytes(R, n) = FIXED + R · (n · per_token + vocab · (b + 8))
    per_token   = L · b · (20·d + 4·d_kv + m·I + 4·d·[states] + 2·H·n·[eager attention])

with L blocks, hidden size d, key/value width d_kv = kv_heads · head_dim, MLP width I
(mixture of experts: max(I, top_k · I_expert)), m = 6 for a gated MLP ``act(gate) ⊙ up`` (and
for experts; the family adapter says which) and 3 for a plain one (GPT-NeoX, GPT-2: one
I-wide activation and its input instead of three), H heads, b bytes per element of the model's
dtype, vocab the LM head's rows (each kept logit row in the model dtype plus its fp32 copy and
gradient). The coefficients are upper bounds of what an attnlrp pass keeps per token and block,
fitted on CPU peaks (fp32, SDPA; Llama and GPT-NeoX shapes, d = 256–512, I/d = 2–12): the
estimate is 1.2–2.0× the measured peak resident-set growth (never below it;
tests/test_distributed.py checks four shapes within [1, 2.5]×). A plain MLP's measured slope
is ≈ 2·I per token and block (GPT-NeoX, I = 512…3072), a gated one's ≈ 5·I. On the H200 it is ≈ 2.7× the
measured peak (7B Mistral shape, bf16, n = 4096, states: 46 GiB estimated, 17.3 GiB measured,
issue #15), so ``auto`` errs towards smaller passes. Eager attention adds its (n × n) score
and probability rows per head. FIXED = 64 MiB on the CPU (allocator and thread-pool slack),
512 MiB on CUDA (kernel workspaces).

Free memory: CUDA ``mem_get_info`` free bytes plus what torch's caching allocator holds unused
(reserved − allocated); CPU ``MemAvailable`` (/proc/meminfo), divided by the ranks sharing the
machine (``LOCAL_WORLD_SIZE``). A pass may use ``FRACTION`` (0.8) of it:
R = ⌊(0.8 · free − FIXED) / (n · per_token + vocab · (b + 8))⌋, clipped to [1, MAX_ROWS].
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from harness_xai.errors import UserError
from harness_xai.lrp.adapters import adapter_for

FRACTION = 0.8
MAX_ROWS = 64
FIXED = {"cpu": 64 << 20, "cuda": 512 << 20}


def _text_config(model: nn.Module):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _get(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _gated(model: nn.Module) -> bool:
    """Whether the family's MLP is gated (``act(gate) ⊙ up``); unknown families count as gated
    (the larger bound)."""
    try:
        adapter = adapter_for(model)
    except UserError:
        return True
    return (any(partner is not None for _, partner in adapter.activations(model))
            or bool(adapter.product_factors(model)))


def pass_bytes(model: nn.Module, n: int, rows: int = 1, states: bool = True) -> int:
    """Upper bound of one pass's peak memory above the weights (module docstring)."""
    c = _text_config(model)
    d = int(_get(c, "hidden_size", "n_embd"))
    layers = int(_get(c, "num_hidden_layers", "n_layer"))
    heads = int(_get(c, "num_attention_heads", "n_head"))
    head_dim = int(_get(c, "head_dim", default=d // heads))
    kv = int(_get(c, "num_key_value_heads", default=heads)) * head_dim
    inter = int(_get(c, "intermediate_size", "n_inner", default=4 * d) or 4 * d)
    top_k, expert = _get(c, "num_experts_per_tok"), _get(c, "moe_intermediate_size")
    if top_k and expert:
        inter = max(inter, int(top_k) * int(expert))
    elif top_k:
        inter *= int(top_k)
    mlp = 6 if top_k or _gated(model) else 3
    b = next(model.parameters()).element_size()
    vocab = model.get_output_embeddings().weight.shape[0]
    eager = (getattr(model.config, "_attn_implementation", None) or "eager").endswith("eager")
    per_token = layers * b * (20 * d + 4 * kv + mlp * inter + (4 * d if states else 0)
                              + (2 * heads * n if eager else 0))
    device = next(model.parameters()).device.type
    return FIXED.get(device, FIXED["cuda"]) + rows * (n * per_token + vocab * (b + 8))


def free_bytes(device: torch.device) -> int:
    """Memory a pass on ``device`` may still take (module docstring)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    sharing = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return available // sharing


def rows_that_fit(model: nn.Module, n: int, states: bool = True, free: int | None = None) -> int:
    """Rows of ``n`` tokens one pass may hold: R of the module docstring."""
    device = next(model.parameters()).device
    free = free_bytes(device) if free is None else free
    one = pass_bytes(model, n, 1, states)
    fixed = pass_bytes(model, n, 0, states)
    rows = int((FRACTION * free - fixed) // max(one - fixed, 1))
    return max(1, min(MAX_ROWS, rows))


def fitter(model: nn.Module, states: bool = True) -> Callable[[int], int]:
    """``n_max → rows`` with the free memory measured now (once per rank's share)."""
    free = free_bytes(next(model.parameters()).device)
    return lambda n: rows_that_fit(model, n, states, free)
