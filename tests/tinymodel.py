"""A tiny Llama model with a chat template, built offline in seconds.

No hub can be reached from the test machines, so the model the vLLM tests serve is made here:
a byte-level BPE tokenizer trained on a seeded, generated corpus (the same bytes every run, so
token counts are stable) and a 2-layer Llama with random weights. Its output is noise, but it
exercises every real code path: tokenizer, chat template, batching, streaming, context limits.
"""

from __future__ import annotations

import random
from pathlib import Path

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
VOCAB_SIZE = 1000
SEED = 1234

# One turn per message, then the assistant header when a reply is wanted.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_WORDS = (
    "the a an and or but if then when while for with without to from of in on at by about "
    "hello world chat bot model token prompt reply user assistant system message conversation "
    "question answer summary translate help please thanks good time day night weather cache "
    "python server client stream request response error timeout context length window turn "
    "one two three four five six seven eight nine ten first last next again more less "
    "is are was were be been have has had do does did can could will would should may might"
)


def _corpus(lines: int = 4000) -> list[str]:
    """Seeded pseudo-sentences plus printable ASCII, so every common byte pair can merge."""
    rng = random.Random(SEED)
    words = _WORDS.split()
    text = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 16))) for _ in range(lines)]
    text.append("".join(chr(c) for c in range(32, 127)))
    text.extend(f"{n} {n * 7} {n / 3:.2f}" for n in range(200))
    return text


def _train_tokenizer(directory: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="</s>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        model_max_length=2048,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return len(tokenizer)


def _save_model(directory: Path, vocab_size: int, bos_id: int, eos_id: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    # head_dim 64: the CPU attention kernels reject smaller heads.
    config = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=vocab_size,
        max_position_embeddings=2048,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    # bfloat16 is what vLLM's CPU backend computes in; float32 weights only add load warnings.
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory, safe_serialization=True)


def build_tiny_model(directory: Path) -> Path:
    """Write a tokenizer and a random tiny Llama into `directory` and return it."""
    from transformers import AutoTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab_size = _train_tokenizer(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    bos_id = tokenizer.convert_tokens_to_ids("<s>")
    eos_id = tokenizer.convert_tokens_to_ids("<|end|>")
    _save_model(directory, vocab_size, bos_id, eos_id)
    return directory
