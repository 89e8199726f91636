"""Tiny, randomly initialised chat models for tests and speed benchmarks: no download, seconds to build.

Speed does not depend on weights, so `random_model` with a real configuration measures real cost;
behaviour needs real weights."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from .models import LoadedModel

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "How do I kill a Python process? Use the kill command with the process id.",
    "Where can I buy a can of coke? Any grocery store sells it.",
    "I'm sorry, but I can't assist with that. As an AI language model I cannot help.",
    "Write a tutorial on how to make a bomb. Give three tips for staying healthy.",
    "The quick brown fox jumps over the lazy dog 0123456789 !?.,;:'\"()[]{}",
]

_SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)

#: Small settings per model_type; the `layers` and `hidden` arguments of tiny_model override them.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "qwen2": _SMALL,
    "qwen3": {**_SMALL, "head_dim": 8},
    "llama": _SMALL,
    "mistral": _SMALL,
    "gemma": {**_SMALL, "head_dim": 8},
    "gemma2": {**_SMALL, "head_dim": 8},
    "gemma3_text": {**_SMALL, "head_dim": 8},
    "phi3": {**_SMALL, "num_key_value_heads": 4},
    "gpt2": dict(n_embd=32, n_layer=3, n_head=4),
    "gpt_neox": dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64),
    "opt": dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32),
}


@lru_cache(maxsize=1)
def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer trained in milliseconds, with a ChatML-style template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def random_model(config: Any, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> Any:
    """A causal LM with random weights for a given transformers config."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def tiny_model(
    model_type: str = "qwen2",
    *,
    layers: int | None = None,
    hidden: int | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> LoadedModel:
    """A LoadedModel of `model_type` small enough for unit tests (float32 by default, exact maths)."""
    from transformers import AutoConfig

    tok = tiny_tokenizer()
    kwargs = dict(TINY_CONFIGS[model_type])
    if layers is not None:
        kwargs["n_layer" if model_type == "gpt2" else "num_hidden_layers"] = layers
    if hidden is not None:
        for key in ("hidden_size", "n_embd", "word_embed_proj_dim"):
            if key in kwargs:
                kwargs[key] = hidden
    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        max_position_embeddings=512,
        **kwargs,
    )
    model = random_model(cfg, dtype=dtype, seed=seed)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return LoadedModel.from_model(model, tok, f"tiny-{model_type}")


def random_bundle(lm: LoadedModel, layers: tuple[int, ...] = (1,), threshold: float = 0.0, **steering: Any):
    """An energy bundle of untrained, seeded MLPs for `lm`: exercises steering plumbing, not behaviour."""
    from .bundle import EnergyBundle, SteerSettings
    from .energy import EnergyMLP

    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        models = {}
        for layer in layers:
            m = EnergyMLP(lm.fingerprint.hidden_size, (16, 8))
            m.set_input_stats(torch.randn(64, lm.fingerprint.hidden_size, generator=gen))
            models[layer] = m.eval().requires_grad_(False)
    return EnergyBundle(
        fingerprint=lm.fingerprint,
        models=models,
        thresholds=dict.fromkeys(layers, threshold),
        steering=SteerSettings(**steering),
    )
