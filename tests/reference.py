"""Plain greedy decoding with transformers' own generate, one prompt at a time: the ground truth."""

from __future__ import annotations

import weakref

import torch

# By model object, weakly: a key of id(model) outlived its model, and a later model at the same address read the
# dead one's results (seen once: a merged LoRA model compared against another model's greedy rows).
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def plain_greedy(model, prompt: list[int], max_new_tokens: int, eos: tuple[int, ...] | None) -> list[int]:
    """New tokens of HF greedy `generate` on this prompt alone, through the first EOS (as HF stops there)."""
    cache = _CACHE.setdefault(model, {})
    key = (tuple(prompt), max_new_tokens, eos)
    if key not in cache:
        ids = torch.tensor([prompt])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=list(eos) if eos else None,
            pad_token_id=0,
        )
        new = out[0, len(prompt):].tolist()
        if eos:  # HF pads finished rows only in batches; alone it just stops, but be explicit
            first = next((i for i, t in enumerate(new) if t in eos), None)
            new = new if first is None else new[: first + 1]
        cache[key] = new
    return cache[key]


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def unique_graphs() -> int:
    """Graphs dynamo has compiled in this process: a call that compiled nothing leaves it unchanged."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def enumerated_joint(model, prompt: list[int], new_tokens: int, vocab: int) -> dict[tuple, float]:
    """P(t_1..t_n | prompt) of plain sampling from `model`'s raw logits (temperature 1, no warpers), for every
    continuation of n = `new_tokens` tokens, by enumerating them (vocab^(n-1) forwards in one batch): the exact law
    a sampling test compares its draws with."""
    import itertools

    prefixes = list(itertools.product(range(vocab), repeat=new_tokens - 1))
    with torch.no_grad():
        logits = model(torch.tensor([prompt + list(p) for p in prefixes])).logits
        probs = torch.softmax(logits[:, len(prompt) - 1:].float(), -1)  # [vocab^(n-1), n, vocab]
    joint = {}
    for row, prefix in enumerate(prefixes):
        steps = probs[row, torch.arange(new_tokens - 1), torch.tensor(prefix, dtype=torch.long)].prod().item() \
            if prefix else 1.0
        for last in range(vocab):
            joint[prefix + (last,)] = steps * probs[row, new_tokens - 1, last].item()
    return joint


def check_sampling_law(model, prompt: list[int], rows: int, new_tokens: int, vocab: int, seed: int, **source) -> None:
    """`rows` sampled continuations of `prompt` (temperature 1, no warpers), drafted by `source` (generate kwargs),
    drafts both accepted and rejected, and their joint law the target's own (chi-square against
    `enumerated_joint`)."""
    from tests.test_sampling import chi_square_rejects

    ids = torch.tensor([prompt] * rows)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), batch_spec="eqspec", max_new_tokens=new_tokens,
                         do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                         generator=torch.Generator().manual_seed(seed), eos_token_id=None, pad_token_id=0,
                         speculation="always", return_dict_in_generate=True, **source)
    stats = out.spec_stats
    assert 0 < stats.accepted_tokens.sum() < stats.drafted_tokens.sum()
    rejects, report = chi_square_rejects(out.sequences[:, len(prompt):], enumerated_joint(model, prompt, new_tokens,
                                                                                          vocab))
    assert not rejects, report
