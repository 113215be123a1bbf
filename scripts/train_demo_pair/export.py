"""The saved files: float16 safetensors, the tokenizer and a greedy generation config in each model's folder."""

from __future__ import annotations

from pathlib import Path

from transformers import GenerationConfig, LlamaForCausalLM, PreTrainedTokenizerFast


def save_model(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """Save as float16 safetensors plus tokenizer and greedy generation config.

    float16 halves the file size, which matters because the checkpoints ship
    inside the package.  The tokenizer goes into every model directory so that
    each one is self-contained.  ``do_sample=False`` makes plain ``generate``
    greedy by default, matching how the demo is used.
    """
    path.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        do_sample=False,
    )
    model.half().save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)

