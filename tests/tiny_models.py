"""Tiny random decoder models of each supported family, built offline from configs."""

from __future__ import annotations

import torch

FAMILIES = ("llama", "mistral", "qwen2")
BIAS_FREE = ("llama", "mistral")  # qwen2 has q/k/v biases


# Families added later (tests/test_families.py): config overrides on top of the shared shape.
# Larger init than the default 0.02 so attention is far from uniform and the soft-caps bend.
_TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.15)
MORE_FAMILIES: dict[str, dict] = {
    "qwen3": dict(head_dim=12),
    "olmo2": {},
    "phi3": {},
    # attention-logit soft-cap (eager only) and final-logit soft-cap, small enough to bend
    "gemma2": dict(head_dim=12, query_pre_attn_scalar=12, sliding_window=8,
                   attn_logit_softcapping=1.0, final_logit_softcapping=2.0),
    # SDPA refuses attention soft-caps, so Gemma 3 (whose real configs have none) gets the final one
    "gemma3_text": dict(head_dim=12, query_pre_attn_scalar=12, sliding_window=8,
                        final_logit_softcapping=2.0),
    "gpt_neox": dict(partial_rotary_factor=0.5, num_key_value_heads=None),  # parallel residual
    "gpt2": dict(n_inner=96, intermediate_size=None, num_key_value_heads=None),
    # sliding window (shorter than the test inputs) on the layers named sliding in layer_types
    "olmo3": dict(sliding_window=6),
    # every 2nd layer without RoPE (NoPE), so a 2-layer model has one of each
    "smollm3": dict(no_rope_layer_interval=2),
    # the four multipliers, none of them 1
    "granite": dict(embedding_multiplier=3.0, residual_multiplier=0.4, attention_multiplier=0.2,
                    logits_scaling=2.5),
    # the multimodal wrapper (Gemma 3 >= 4B): these keys go to its text config, see tiny_model
    "gemma3": dict(head_dim=12, query_pre_attn_scalar=12, sliding_window=8),
    # mixtures of experts: 4 experts, top 2 (Qwen3-MoE: layer 0 dense, the others routed)
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=6),
    "qwen3_moe": dict(head_dim=12, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      mlp_only_layers=[0], norm_topk_prob=True),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2),
    # attention sinks, biases everywhere, clamped GLU experts (a small limit, so clamps bite)
    "gpt_oss": dict(head_dim=12, num_local_experts=4, num_experts_per_tok=2, sliding_window=6,
                    swiglu_limit=0.5),
}
MOE = ("mixtral", "qwen3_moe", "olmoe", "gpt_oss")
EAGER_ONLY = ("gemma2", "gpt_oss")  # transformers refuses SDPA (soft-caps; attention sinks)
#: the multimodal wrapper's vision tower, as small as SigLIP allows
_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
               image_size=28, patch_size=14)


def tiny_model(family: str, attn: str = "sdpa", seed: int = 0, layers: int = 2, vocab: int = 97):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    shape = dict(vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=layers,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                 tie_word_embeddings=False)
    if family in MORE_FAMILIES:
        shape.update(_TOKENS, **MORE_FAMILIES[family])
        shape = {k: v for k, v in shape.items() if v is not None}
        if family in ("gemma3_text", "gemma3", "olmo3", "gpt_oss"):  # sliding and full layers
            shape["layer_types"] = [("sliding_attention", "full_attention")[i % 2]
                                    for i in range(layers)]
    if family == "gemma3":
        config = AutoConfig.for_model(family, text_config=shape, vision_config=_VISION,
                                      mm_tokens_per_image=4, image_token_id=96, boi_token_id=94,
                                      eoi_token_id=95, initializer_range=0.15,
                                      tie_word_embeddings=False)
    else:
        config = AutoConfig.for_model(family, **shape)
    config._attn_implementation = attn
    model = AutoModelForCausalLM.from_config(config).eval()
    # random init leaves norm weights at 1: perturb them so the norm rules are really exercised
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:  # GPT-2 names its LayerNorms ln_1/ln_2/ln_f
                p.add_(0.3 * torch.randn_like(p))
    return model


def random_ids(n: int = 24, seed: int = 1, vocab: int = 97) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, n), generator=g)
