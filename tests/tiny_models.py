"""Tiny random decoder models of each supported family, built offline from configs."""

from __future__ import annotations

import torch

FAMILIES = ("llama", "mistral", "qwen2")
BIAS_FREE = ("llama", "mistral")  # qwen2 has q/k/v biases


def tiny_model(family: str, attn: str = "sdpa", seed: int = 0, layers: int = 2):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        family, vocab_size=97, hidden_size=48, intermediate_size=96, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False)
    config._attn_implementation = attn
    model = AutoModelForCausalLM.from_config(config).eval()
    # random init leaves norm weights at 1: perturb them so the norm rules are really exercised
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def random_ids(n: int = 24, seed: int = 1, vocab: int = 97) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, n), generator=g)
