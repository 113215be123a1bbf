"""What the commands run on: the bundled pair (or any HF model id or path), its prompts, and the left-padded
batch every method is handed, so that all methods start from the same tensors."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

BUNDLED_PAIR = Path(__file__).resolve().parents[1] / "demo_pair"
BUNDLED_OTHER_DRAFT = BUNDLED_PAIR / "draft_other_tokenizer"  # a draft with a tokenizer of its own
DRAFT_INITS = ("trained", "random")


def load_pair(target: str | None, draft: str | None, dtype: torch.dtype, device: str, draft_init: str = "trained"):
    """The target (with the mixin), the draft and the target's tokenizer. `draft_init="random"`: the draft's config
    with freshly initialised weights (seeded: torch.manual_seed(0), the same weights every run), a draft that
    rarely agrees with the target, to show what speculation costs when acceptance is low."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    import hf_batchspec

    if draft_init not in DRAFT_INITS:
        raise ValueError(f"draft_init must be one of {DRAFT_INITS}; got {draft_init!r}")
    target = target or str(BUNDLED_PAIR / "target")
    draft = draft or str(BUNDLED_PAIR / "draft")
    tokenizer = AutoTokenizer.from_pretrained(target)
    load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()  # noqa: E731
    if draft_init == "trained":
        draft_model = load(draft)
    else:
        state = torch.random.get_rng_state()
        torch.manual_seed(0)
        try:
            draft_model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(draft), dtype=dtype)
        finally:
            torch.random.set_rng_state(state)  # the bench's own draws (none today) stay as they were
        try:  # its stop and pad ids, as the trained draft has them
            draft_model.generation_config = GenerationConfig.from_pretrained(draft)
        except OSError:
            pass
        draft_model = draft_model.to(device).eval()
    return hf_batchspec.enable(load(target)), draft_model, tokenizer


def load_other_draft(path: str | None, dtype: torch.dtype, device: str):
    """A draft with a tokenizer of its own and that tokenizer (None when there is none to load)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = path or (str(BUNDLED_OTHER_DRAFT) if BUNDLED_OTHER_DRAFT.is_dir() else None)
    if path is None:
        return None
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, AutoTokenizer.from_pretrained(path)


def is_bundled_target(target: str | None) -> bool:
    """Whether `--target` is the bundled target, for which the bundled drafts were trained."""
    bundled = BUNDLED_PAIR / "target"
    return target is None or (Path(target).is_dir() and Path(target).resolve() == bundled.resolve())


def parameter_count(model) -> int:
    """The model's size as the setup records it (every parameter, embeddings included)."""
    return sum(p.numel() for p in model.parameters())


def load_prompts(path: str | None, tokenizer, count: int) -> list[list[int]]:
    """Spec-Bench format (one JSON object per line, the prompt in `turns[0]`); the bundled code prompts by default."""
    if path is None:
        lines = resources.files("hf_batchspec").joinpath("data/code_prompts.jsonl").read_text().splitlines()
    else:
        lines = Path(path).read_text().splitlines()
    texts = [json.loads(line)["turns"][0] for line in lines if line.strip()][:count]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] or [tokenizer.bos_token_id] for text in texts]


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`prompts` as one batch, left-padded with `pad_id` as transformers' decoder-only `generate` takes it (every
    row's last column a real token): ids [B, W], attention mask [B, W] (1 on real tokens), and W, the width, where
    each row's new tokens begin in the output."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # [B, W]
    mask = torch.zeros_like(ids)  # [B, W]
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = torch.tensor(p), 1
    return ids.to(device), mask.to(device), width
