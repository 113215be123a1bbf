"""The one chi-square test of the sampling tests, and the exact laws they compare draws with.

Every sampling test draws many rows with a fixed generator and compares their counts with an exact distribution at
a one-in-a-million level (normal quantile `Z`): a wrong law (q instead of the residual, the wrong position, an
unnormalised residual) moves the statistic far past it, while the fixed seeds make every run draw the same numbers.
"""

from __future__ import annotations

import itertools
import math

import torch

Z = 4.75  # the normal quantile of the test's level, ~1e-6 (Wilson-Hilferty maps it onto chi-square)


def chi_square_limit(df: int, z: float = Z) -> float:
    """Upper quantile of chi-square with `df` degrees of freedom at the normal quantile `z` (Wilson-Hilferty;
    scipy is not needed)."""
    assert df >= 1, f"a chi-square test needs two cells or more (df={df})"
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def chi_square_rejects(samples: torch.Tensor, joint: dict[tuple, float], alpha_z: float = Z) -> tuple[bool, str]:
    """Do the rows of `samples` ([N, n] token ids) reject the law `joint` (sequence -> probability)? Cells whose
    expected count is under 5 are pooled into one. Returns (rejects, a report of the statistic)."""
    counts: dict[tuple, int] = {}
    for seq in map(tuple, samples.tolist()):
        counts[seq] = counts.get(seq, 0) + 1
    n = samples.shape[0]
    stat, df, pooled_e, pooled_o = 0.0, -1, 0.0, 0
    for seq, p in joint.items():
        expected, observed = n * p, counts.get(seq, 0)
        if expected < 5:
            pooled_e, pooled_o = pooled_e + expected, pooled_o + observed
            continue
        stat += (observed - expected) ** 2 / expected
        df += 1
    if pooled_e > 0:
        stat += (pooled_o - pooled_e) ** 2 / pooled_e
        df += 1
    critical = chi_square_limit(df, alpha_z)
    return stat > critical, f"chi2={stat:.1f} critical={critical:.1f} df={df}"


def assert_distributed_as(draws: torch.Tensor, probs, label: str = "") -> None:
    """`draws` (token ids) look like independent draws from `probs`; tokens of probability 0 never occur."""
    probs = torch.as_tensor(probs, dtype=torch.float64)
    probs = probs / probs.sum()
    counts = torch.bincount(draws.flatten(), minlength=len(probs)).double()
    assert len(counts) == len(probs), f"{label}: drew a token outside the vocabulary"
    possible = probs > 0
    assert counts[~possible].sum() == 0, f"{label}: drew a token of probability 0: {counts.tolist()}"
    expected = probs[possible] * counts.sum()
    assert expected.min() >= 20, f"{label}: too few draws for the test"  # the chi-square approximation holds
    df = int(possible.sum()) - 1
    if df == 0:
        return  # a single possible token: it was always drawn
    chi2 = float(((counts[possible] - expected) ** 2 / expected).sum())
    assert chi2 < chi_square_limit(df), (
        f"{label}: counts {counts.tolist()} vs expected {(probs * counts.sum()).tolist()} (chi2 {chi2:.1f})")


def enumerated_joint(model, prompt: list[int], new_tokens: int, vocab: int, process=None) -> dict[tuple, float]:
    """P(t_1..t_n | prompt) of plain sampling from `model` for every continuation of n = `new_tokens` tokens, by
    enumerating them (vocab^(n-1) forwards in one batch): the exact law a sampling test compares its draws with.
    `process` maps the logits [N, n, vocab] to the scores sampled from (warpers); None: the raw logits
    (temperature 1, no warpers)."""
    prefixes = list(itertools.product(range(vocab), repeat=new_tokens - 1))
    with torch.no_grad():
        logits = model(torch.tensor([prompt + list(p) for p in prefixes])).logits[:, len(prompt) - 1:]
        probs = torch.softmax((logits if process is None else process(logits)).float(), -1)  # [vocab^(n-1), n, V]
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


def warpers(settings: dict) -> list:
    """The warpers transformers builds for these sampling settings (temperature, top_k, top_p, top_h), in its order."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    out = [TemperatureLogitsWarper(settings.get("temperature", 1.0))]
    if "top_k" in settings:
        out.append(TopKLogitsWarper(settings["top_k"]))
    if "top_p" in settings:
        out.append(TopPLogitsWarper(settings["top_p"]))
    if "top_h" in settings:
        from transformers.generation.logits_process import TopHLogitsWarper

        out.append(TopHLogitsWarper(settings["top_h"]))
    return out


def warped(settings: dict):
    """`process` for `enumerated_joint`: the scores transformers samples from under these settings."""
    from hf_batchspec.processors import ScoreProcessing

    return ScoreProcessing(warpers(settings))
