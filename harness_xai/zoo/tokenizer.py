"""Byte-level BPE tokenizer of the zoo, trained on the synthetic training corpus.

1. Pre-tokenize like GPT-2 (ByteLevel with its regex, no prefix space): ``" ne 84. ne"`` →
   ``" ne" " 84" "." " ne"``, ``"3+5="`` → ``"3" "+" "5" "="``; every key (``" ne"``), value
   (``" 84"``) and sum (``" 16"``) becomes a single token once BPE has merged them.
2. Train BPE (``tokenizers.trainers.BpeTrainer``) on ``n_texts`` texts of the training stream, with
   the full byte alphabet as initial alphabet (any text encodes) and ``<|endoftext|>`` as the only
   special token (bos = eos = pad).
3. Wrap it in ``transformers.PreTrainedTokenizerFast``. No post-processor adds special tokens, so
   ``encode(text, add_special_tokens=False)`` (what lm-eval's HFLM uses) is a plain tokenization.
"""

from __future__ import annotations

import itertools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from harness_xai.zoo.taskgen import TRAIN_SEED, train_texts

EOT = "<|endoftext|>"


def train_tokenizer(vocab_size: int = 512, n_texts: int = 4000, seed: int = TRAIN_SEED,
                    texts: list[str] | None = None):
    """A ``PreTrainedTokenizerFast`` trained deterministically on the training corpus (or on
    ``texts``: the steps model's own corpus)."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    if texts is None:
        texts = [text for _, text, _ in itertools.islice(train_texts(seed + 1), n_texts)]
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT, unk_token=None,
        model_max_length=1024, clean_up_tokenization_spaces=False)
