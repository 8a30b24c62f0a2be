"""Read a Hugging Face causal LM into a family-neutral float64 description (``ModelSpec``).

Algorithm:
1. Dispatch on ``config.model_type`` to a reader (Llama-like families, GPT-NeoX, GPT-2).
2. Copy every weight the forward needs to float64, splitting fused projections into their parts
   (Phi-3 ``qkv_proj`` / ``gate_up_proj``, GPT-NeoX ``query_key_value`` interleaved per head,
   GPT-2 ``c_attn``; GPT-2's ``Conv1D`` weights are transposed to the ``(out, in)`` layout).
3. Record the structure: norm kinds and their placement (pre-norm, OLMo 2 post-norm, Gemma
   sandwich), residual kind (sequential / parallel), q/k norm scope (per head / whole projection),
   RoPE frequencies (from the model's own rotary module, so partial rotary and per-layer-type
   tables come for free; SmolLM3's NoPE layers have none), sliding windows, soft-caps, Gemma's
   embedding scale and ``1 + w`` norms. Granite's constant multipliers are folded into weights:
   ``m_emb`` into the embedding scale, ``m_res`` into the o/down projections, ``1/s_logit`` into
   the head (a constant factor of a linear map leaves the ε-rule's relevance unchanged).
   Gemma 3 multimodal: the text model inside the wrapper is read (text-only input).
Elementwise activations are the model's own (parameter-free) modules, applied to float64 input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from harness_xai.errors import UserError

Tensor = torch.Tensor


def _f64(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().to("cpu", torch.float64).clone()


@dataclass
class Linear:
    weight: Tensor  # (out, in)
    bias: Tensor | None  # (out,)

    @classmethod
    def of(cls, module: nn.Module, rows: slice | Tensor | None = None) -> Linear:
        """float64 copy of ``module``'s weight (and bias), optionally only the output ``rows``."""
        weight, bias = _f64(module.weight), _f64(getattr(module, "bias", None))
        if type(module).__name__ == "Conv1D":  # GPT-2: y = x @ W + b with W (in, out)
            weight = weight.T.contiguous()
        if rows is not None:
            weight, bias = weight[rows], None if bias is None else bias[rows]
        return cls(weight, bias)


@dataclass
class Norm:
    kind: str  # "rms" | "layer"
    weight: Tensor | None  # (d,) effective scale (Gemma's 1 + w already added)
    bias: Tensor | None  # (d,) LayerNorm only
    eps: float


@dataclass
class Attention:
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    n_heads: int
    n_kv_heads: int
    head_dim: int
    scaling: float  # scores = scaling · q·k
    q_norm: Norm | None
    k_norm: Norm | None
    qk_norm_per_head: bool  # True: over head_dim (Qwen3, Gemma 3); False: whole projection (OLMo 2)
    inv_freq: Tensor | None  # (rot/2,) RoPE frequencies; None: no RoPE (GPT-2)
    rope_scale: float  # multiplies cos and sin
    window: int | None  # sliding window: key j visible from query i iff i − window < j ≤ i
    softcap: float | None  # scores → c · tanh(scores / c)
    sinks: Tensor | None = None  # (H,) gpt-oss: a learned logit per head in each softmax row


@dataclass
class MLP:
    up: Linear  # plain MLP: the first projection
    down: Linear
    act: Callable[[Tensor], Tensor]
    gate: Linear | None  # gated: down(act(gate(x)) ⊙ up(x))
    #: gpt-oss experts: gate → min(gate, limit), up → clamp(up, ±limit) + 1 (None: neither)
    limit: float | None = None


@dataclass
class MoE:
    """``y_t = Σ_{e ∈ top-k} w_e E_e(x_t)``, ``w`` = softmax of the router logits over all experts,
    top-k, renormalised over the top-k if ``normalize``."""

    router: Linear  # (E, d)
    experts: list[MLP]
    top_k: int
    normalize: bool
    softmax_of_top: bool = False  # gpt-oss: w = softmax over the top-k logits only


@dataclass
class Block:
    attn: Attention
    mlp: MLP | MoE
    parallel: bool  # h + attn(pre_attn(h)) + mlp(pre_mlp(h))
    pre_attn: Norm | None
    post_attn: Norm | None
    pre_mlp: Norm | None
    post_mlp: Norm | None


@dataclass
class ModelSpec:
    family: str
    embed: Tensor  # (vocab, d)
    embed_scale: float
    positions: Tensor | None  # (max_positions, d) learned absolute positions (GPT-2)
    blocks: list[Block]
    final_norm: Norm
    head: Linear  # (vocab, d)
    logit_softcap: float | None


def read_model(model: nn.Module) -> ModelSpec:
    """The float64 description of ``model`` (weights copied; the model is not modified)."""
    model_type = getattr(model.config, "model_type", None)
    if model_type in LLAMA_LIKE:
        return _read_llama_like(model)
    if model_type == "gpt_neox":
        return _read_gpt_neox(model)
    if model_type == "gpt2":
        return _read_gpt2(model)
    raise UserError(f"the reference LRP has no reader for model_type {model_type!r}; "
                    f"supported: {', '.join(sorted(LLAMA_LIKE + ('gpt_neox', 'gpt2')))}.")


LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "olmo2", "phi3", "gemma2", "gemma3_text",
              "olmo3", "smollm3", "granite", "gemma3", "mixtral", "qwen3_moe", "olmoe", "gpt_oss")
_GEMMA = ("gemma2", "gemma3_text", "gemma3")


def _norm(module: nn.Module | None, offset: float = 0.0) -> Norm | None:
    if module is None:
        return None
    if isinstance(module, nn.LayerNorm):
        return Norm("layer", _f64(module.weight), _f64(module.bias), float(module.eps))
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    return Norm("rms", _f64(module.weight) + offset, None, float(eps))


def _rope(rotary: nn.Module, layer_type: str | None) -> tuple[Tensor, float]:
    if hasattr(rotary, "inv_freq"):
        return _f64(rotary.inv_freq), float(rotary.attention_scaling)
    return (_f64(getattr(rotary, f"{layer_type}_inv_freq")),  # Gemma 3: one table per layer type
            float(getattr(rotary, f"{layer_type}_attention_scaling")))


def _read_llama_like(model: nn.Module) -> ModelSpec:
    # Gemma 3 multimodal: the text model inside the wrapper, its own (text) config
    net = getattr(model.model, "language_model", model.model)
    config = model.config.get_text_config()
    gemma = model.config.model_type in _GEMMA
    offset = 1.0 if gemma else 0.0
    layer_types = getattr(config, "layer_types", None)
    blocks = []
    for i, layer in enumerate(net.layers):
        att, mlp = layer.self_attn, layer.mlp
        hd, n_heads, n_kv = att.head_dim, config.num_attention_heads, config.num_key_value_heads
        if hasattr(att, "qkv_proj"):  # Phi-3: [q | k | v] rows
            q_rows, kv_rows = n_heads * hd, n_kv * hd
            q, k, v = (Linear.of(att.qkv_proj, s) for s in (
                slice(0, q_rows), slice(q_rows, q_rows + kv_rows), slice(q_rows + kv_rows, None)))
        else:
            q, k, v = Linear.of(att.q_proj), Linear.of(att.k_proj), Linear.of(att.v_proj)
        if hasattr(att, "sliding_window"):  # Qwen2/3, Gemma: per layer (None on full layers)
            window = att.sliding_window
        elif config.model_type in ("mistral", "phi3", "mixtral"):
            window = getattr(config, "sliding_window", None)
        else:
            window = None
        layer_type = layer_types[i] if layer_types else None
        inv_freq, rope_scale = _rope(net.rotary_emb, layer_type)
        if not getattr(att, "use_rope", True):  # SmolLM3's NoPE layers
            inv_freq, rope_scale = None, 1.0
        q_norm = _norm(getattr(att, "q_norm", None), offset)
        attn = Attention(
            q=q, k=k, v=v, o=Linear.of(att.o_proj), n_heads=n_heads, n_kv_heads=n_kv, head_dim=hd,
            scaling=float(att.scaling), q_norm=q_norm,
            k_norm=_norm(getattr(att, "k_norm", None), offset),
            qk_norm_per_head=q_norm is not None and q_norm.weight.numel() == hd,
            inv_freq=inv_freq, rope_scale=rope_scale, window=window,
            softcap=getattr(att, "attn_logit_softcapping", None),
            sinks=_f64(getattr(att, "sinks", None)))
        if hasattr(mlp, "experts"):  # mixture of experts (Mixtral, Qwen3-MoE, OLMoE)
            blocks.append(Block(attn, _read_moe(mlp), False, *(_norm(m, offset) for m in (
                layer.input_layernorm, None, layer.post_attention_layernorm, None))))
            continue
        if hasattr(mlp, "gate_up_proj"):  # Phi-3: gate, up = chunk(2)
            ff = mlp.gate_up_proj.weight.shape[0] // 2
            gate = Linear.of(mlp.gate_up_proj, slice(0, ff))
            up = Linear.of(mlp.gate_up_proj, slice(ff, None))
            act = mlp.activation_fn
        else:
            gate, up, act = Linear.of(mlp.gate_proj), Linear.of(mlp.up_proj), mlp.act_fn
        down, o = Linear.of(mlp.down_proj), attn.o
        residual = float(getattr(layer, "residual_multiplier", 1.0))  # Granite: h + m · branch
        if residual != 1.0:  # a constant factor folded into the (bias-free) output projections
            down, attn.o = _scaled(down, residual), _scaled(o, residual)
        feed = MLP(up=up, down=down, act=act, gate=gate)
        if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma: sandwich norms
            norms = (layer.input_layernorm, layer.post_attention_layernorm,
                     layer.pre_feedforward_layernorm, layer.post_feedforward_layernorm)
        elif hasattr(layer, "post_feedforward_layernorm"):  # OLMo 2: post-norms only
            norms = (None, layer.post_attention_layernorm, None, layer.post_feedforward_layernorm)
        else:  # pre-norm (Llama layout)
            norms = (layer.input_layernorm, None, layer.post_attention_layernorm, None)
        blocks.append(Block(attn, feed, False, *(_norm(m, offset) for m in norms)))
    embed = net.embed_tokens
    scale = float(embed.embed_scale) if hasattr(embed, "embed_scale") else 1.0
    scale *= float(getattr(net, "embedding_multiplier", 1.0))  # Granite
    head = Linear.of(model.get_output_embeddings())
    logit_scale = float(getattr(config, "logits_scaling", 1.0))  # Granite: logits / s
    if logit_scale != 1.0:
        head = _scaled(head, 1.0 / logit_scale)
    # the multimodal Gemma 3 wrapper applies no final soft-cap (Gemma3ForCausalLM does)
    softcap = None if net is not model.model else getattr(config, "final_logit_softcapping", None)
    return ModelSpec(family=model.config.model_type, embed=_f64(embed.weight), embed_scale=scale,
                     positions=None, blocks=blocks, final_norm=_norm(net.norm, offset),
                     head=head, logit_softcap=softcap)


def _read_moe(block: nn.Module) -> MoE:
    """Routed SwiGLU experts stored as (E, 2·I, d) ``gate_up_proj`` and (E, d, I) ``down_proj``
    (gpt-oss: transposed, gate/up interleaved, with biases and clamps)."""
    experts = block.experts
    if hasattr(experts, "gate_up_proj_bias"):
        return _read_gpt_oss_moe(block)
    router = block.gate
    inner = experts.gate_up_proj.shape[1] // 2
    mlps = []
    for e in range(experts.num_experts):
        gate_up = _f64(experts.gate_up_proj[e])
        mlps.append(MLP(up=Linear(gate_up[inner:], None),
                        down=Linear(_f64(experts.down_proj[e]), None),
                        act=experts.act_fn, gate=Linear(gate_up[:inner], None)))
    return MoE(router=Linear(_f64(router.weight), None), experts=mlps, top_k=int(router.top_k),
               normalize=bool(getattr(router, "norm_topk_prob", True)))


def _read_gpt_oss_moe(block: nn.Module) -> MoE:
    experts, router = block.experts, block.router
    alpha = float(experts.alpha)
    mlps = []
    for e in range(experts.num_experts):
        w, b = _f64(experts.gate_up_proj[e]).T, _f64(experts.gate_up_proj_bias[e])  # (2I, d)
        mlps.append(MLP(up=Linear(w[1::2].contiguous(), b[1::2]),
                        down=Linear(_f64(experts.down_proj[e]).T.contiguous(),
                                    _f64(experts.down_proj_bias[e])),
                        act=lambda g: g * torch.sigmoid(g * alpha),
                        gate=Linear(w[::2].contiguous(), b[::2]), limit=float(experts.limit)))
    return MoE(router=Linear(_f64(router.weight), _f64(router.bias)), experts=mlps,
               top_k=int(router.top_k), normalize=False, softmax_of_top=True)


def _scaled(lin: Linear, factor: float) -> Linear:
    """``factor · (W x + b)`` as one Linear (a constant multiplier after a projection)."""
    return Linear(lin.weight * factor, None if lin.bias is None else lin.bias * factor)


def _read_gpt_neox(model: nn.Module) -> ModelSpec:
    config, net = model.config, model.gpt_neox
    blocks = []
    for layer in net.layers:
        att, mlp = layer.attention, layer.mlp
        n_heads, hd = config.num_attention_heads, att.head_size
        # fused rows are laid out (head, [q|k|v], head_dim): view(n, H, 3·hd) then chunk(3)
        rows = torch.arange(3 * n_heads * hd).view(n_heads, 3, hd)
        q, k, v = (Linear.of(att.query_key_value, rows[:, s].reshape(-1)) for s in range(3))
        inv_freq, rope_scale = _rope(net.rotary_emb, None)
        attn = Attention(q=q, k=k, v=v, o=Linear.of(att.dense), n_heads=n_heads, n_kv_heads=n_heads,
                         head_dim=hd, scaling=float(att.scaling), q_norm=None, k_norm=None,
                         qk_norm_per_head=False, inv_freq=inv_freq, rope_scale=rope_scale,
                         window=None, softcap=None)
        feed = MLP(up=Linear.of(mlp.dense_h_to_4h), down=Linear.of(mlp.dense_4h_to_h), act=mlp.act,
                   gate=None)
        blocks.append(Block(attn, feed, bool(layer.use_parallel_residual),
                            _norm(layer.input_layernorm), None,
                            _norm(layer.post_attention_layernorm), None))
    return ModelSpec(family="gpt_neox", embed=_f64(net.embed_in.weight), embed_scale=1.0,
                     positions=None, blocks=blocks, final_norm=_norm(net.final_layer_norm),
                     head=Linear.of(model.get_output_embeddings()), logit_softcap=None)


def _read_gpt2(model: nn.Module) -> ModelSpec:
    config, net = model.config, model.transformer
    d, n_heads = config.hidden_size, config.num_attention_heads
    blocks = []
    for block in net.h:
        att, mlp = block.attn, block.mlp
        q, k, v = (Linear.of(att.c_attn, slice(s * d, (s + 1) * d)) for s in range(3))
        attn = Attention(q=q, k=k, v=v, o=Linear.of(att.c_proj), n_heads=n_heads, n_kv_heads=n_heads,
                         head_dim=d // n_heads, scaling=float(att.scaling), q_norm=None,
                         k_norm=None, qk_norm_per_head=False, inv_freq=None, rope_scale=1.0,
                         window=None, softcap=None)
        feed = MLP(up=Linear.of(mlp.c_fc), down=Linear.of(mlp.c_proj), act=mlp.act, gate=None)
        blocks.append(Block(attn, feed, False, _norm(block.ln_1), None, _norm(block.ln_2), None))
    return ModelSpec(family="gpt2", embed=_f64(net.wte.weight), embed_scale=1.0,
                     positions=_f64(net.wpe.weight), blocks=blocks, final_norm=_norm(net.ln_f),
                     head=Linear.of(model.get_output_embeddings()), logit_softcap=None)
