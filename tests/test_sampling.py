"""Speculative sampling keeps the target's distribution.

On a 5-token vocabulary the exact joint distribution of the first four generated tokens under the target
alone is computed by enumeration (625 continuations, one forward); the batch speculative sampler draws 30000
rows of the same prompt in one call; a chi-square test on the joint (cells with expected count < 5 pooled)
must not reject at alpha = 1e-6. The seed is fixed, so the outcome is deterministic; the test is sensitive
enough to catch a sampler that skips the residual distribution (see test_a_biased_sampler_is_caught).
"""

from __future__ import annotations

import pytest
import torch

import hf_batchspec
from hf_batchspec import acceptance
from tests.toolkit import chi_square_rejects, enumerated_joint, perturbed
from tests.toolkit.distributions import warped
from tests.toolkit.models import sampling_llama

V, NEW, ROWS = 5, 4, 30000
PROMPT = [1, 3, 0, 2]


TARGET = hf_batchspec.enable(sampling_llama(V, 0))
DRAFTS = {"self": TARGET, "perturbed": perturbed(TARGET, 0.3), "unrelated": sampling_llama(V, 11)}
WARPINGS = {
    "plain": dict(temperature=1.0),
    "temp_topk": dict(temperature=0.7, top_k=3),
    "topp": dict(top_p=0.8),
}


def exact_joint(settings: dict) -> dict[tuple, float]:
    """P(t1..t4 | prompt) under the target alone, by enumerating every continuation."""
    return enumerated_joint(TARGET, PROMPT, NEW, V, process=warped(settings))


def speculative_samples(draft, settings: dict, strategy: str = "eqspec", **kwargs) -> torch.Tensor:
    ids = torch.tensor([PROMPT] * ROWS)
    out = TARGET.generate(ids, assistant_model=draft, batch_spec=strategy, num_assistant_tokens=2,
                          max_new_tokens=NEW, do_sample=True, generator=torch.Generator().manual_seed(1234),
                          return_dict_in_generate=True, **{"speculation": "always", **settings, **kwargs})
    assert out.spec_stats.rounds >= 1 and out.spec_stats.drafted_tokens.sum() > 0
    return out.sequences[:, len(PROMPT):]


@pytest.mark.parametrize("warping", sorted(WARPINGS))
@pytest.mark.parametrize("draft", sorted(DRAFTS))
def test_joint_distribution_matches_the_target(draft, warping):
    settings = WARPINGS[warping]
    rejects, report = chi_square_rejects(speculative_samples(DRAFTS[draft], settings), exact_joint(settings))
    assert not rejects, report


def test_exspec_refills_keep_the_distribution():
    settings = WARPINGS["temp_topk"]
    samples = speculative_samples(DRAFTS["perturbed"], settings, strategy="exspec", max_batch_size=4096)
    rejects, report = chi_square_rejects(samples, exact_joint(settings))
    assert not rejects, report


def test_a_biased_sampler_is_caught(monkeypatch):
    """The same test rejects a sampler that draws the token after a rejection from p instead of the residual."""

    def biased(draft_tokens, draft_probs, target_probs, budget, generator=None):
        accepted, _ = original(draft_tokens, draft_probs, target_probs, budget, generator)
        rows = torch.arange(draft_tokens.shape[0])
        return accepted, acceptance.sample(target_probs[rows, accepted], generator)

    original = acceptance.speculative_sample
    monkeypatch.setattr("hf_batchspec.decoding.speculative_sample", biased)
    settings = WARPINGS["plain"]
    rejects, report = chi_square_rejects(speculative_samples(DRAFTS["unrelated"], settings), exact_joint(settings))
    assert rejects, report


def test_seeded_runs_repeat_and_greedy_draws_nothing():
    ids = torch.tensor([PROMPT] * 8)
    run = lambda **kw: TARGET.generate(ids, assistant_model=DRAFTS["perturbed"], batch_spec="exspec",  # noqa
                                       max_batch_size=3, max_new_tokens=12, **kw)
    torch.manual_seed(5)
    first = run(do_sample=True)
    torch.manual_seed(5)
    assert torch.equal(first, run(do_sample=True))
    assert torch.equal(run(do_sample=True, generator=torch.Generator().manual_seed(9)),
                       run(do_sample=True, generator=torch.Generator().manual_seed(9)))
    state = torch.get_rng_state()
    run(do_sample=False, temperature=0.5)  # a stale sampling setting does not make greedy sample
    assert torch.equal(state, torch.get_rng_state())


def drafted_run(settings: dict, strategy: str, **kwargs):
    """ROWS rows of PROMPT drafted by a source given in kwargs (prompt lookup, early exit, ...): the output with
    its stats, after checking that drafts were offered and that some were accepted and some rejected, so both
    the acceptance test and the rejection's replacement (the residual) decided tokens."""
    if strategy == "exspec":
        kwargs.setdefault("max_batch_size", 4096)  # the default 32 slots take ~1000 refills: minutes, not seconds
    out = TARGET.generate(torch.tensor([PROMPT] * ROWS), batch_spec=strategy, max_new_tokens=NEW, do_sample=True,
                          generator=torch.Generator().manual_seed(1234), return_dict_in_generate=True,
                          **{"speculation": "always", **settings, **kwargs})
    drafted, accepted = out.spec_stats.drafted_tokens.sum().item(), out.spec_stats.accepted_tokens.sum().item()
    assert 0 < accepted < drafted, (accepted, drafted)
    return out


LOOKUP = {"eqspec": dict(prompt_lookup_num_tokens=2, max_matching_ngram_size=1),
          "exspec": dict(prompt_lookup_num_tokens=3, max_matching_ngram_size=2)}


@pytest.mark.parametrize("warping", ["plain", "topp"])
@pytest.mark.parametrize("strategy", sorted(LOOKUP))
def test_prompt_lookup_keeps_the_distribution(strategy, warping):
    """Lookup drafts are copies (q one-hot): a draft is kept with probability p(d), a rejection draws from p
    without d. PROMPT on a 5-token vocabulary matches most rounds."""
    settings = WARPINGS[warping]
    out = drafted_run(settings, strategy, **LOOKUP[strategy])
    rejects, report = chi_square_rejects(out.sequences[:, len(PROMPT):], exact_joint(settings))
    assert not rejects, report


@pytest.mark.parametrize("corruption", ["uniform_q", "replacement_from_p"])
def test_a_biased_lookup_sampler_is_caught(monkeypatch, corruption):
    """The lookup test is sensitive on its own path: it rejects a q that is not the drafter's (uniform instead of
    one-hot: drafts kept with min(1, 5 p(d))), and a rejection's replacement drawn from p instead of p without d."""
    if corruption == "uniform_q":
        monkeypatch.setattr("hf_batchspec.decoding.one_hot",
                            lambda drafts, vocab, dtype: torch.full((*drafts.shape, vocab), 1 / vocab, dtype=dtype))
    else:
        def biased(draft_tokens, draft_probs, target_probs, budget, generator=None):
            accepted, _ = original(draft_tokens, draft_probs, target_probs, budget, generator)
            return accepted, acceptance.sample(target_probs[torch.arange(len(accepted)), accepted], generator)

        original = acceptance.speculative_sample
        monkeypatch.setattr("hf_batchspec.decoding.speculative_sample", biased)
    settings = WARPINGS["plain"]
    out = drafted_run(settings, "eqspec", **LOOKUP["eqspec"])
    rejects, report = chi_square_rejects(out.sequences[:, len(PROMPT):], exact_joint(settings))
    assert rejects, report


@pytest.mark.parametrize("warping", ["plain", "temp_topk"])
def test_early_exit_keeps_the_distribution(warping):
    """The target's first layer drafts (sampled from its own processed scores); the kept tokens follow the target."""
    settings = WARPINGS[warping]
    out = drafted_run(settings, "eqspec", assistant_early_exit=1, num_assistant_tokens=2)
    rejects, report = chi_square_rejects(out.sequences[:, len(PROMPT):], exact_joint(settings))
    assert not rejects, report


def test_num_return_sequences_samples_each_row_from_the_target():
    """One prompt, ROWS return sequences: transformers repeats the prompt, every row is an independent sample."""
    settings = WARPINGS["temp_topk"]
    out = TARGET.generate(torch.tensor([PROMPT]), num_return_sequences=ROWS, do_sample=True, batch_spec="exspec",
                          max_batch_size=4096, assistant_model=DRAFTS["perturbed"], num_assistant_tokens=2,
                          max_new_tokens=NEW, generator=torch.Generator().manual_seed(1234),
                          return_dict_in_generate=True, **settings)
    assert out.sequences.shape == (ROWS, len(PROMPT) + NEW)
    assert (out.sequences[:, :len(PROMPT)] == torch.tensor(PROMPT)).all()
    rejects, report = chi_square_rejects(out.sequences[:, len(PROMPT):], exact_joint(settings))
    assert not rejects, report


def test_num_return_sequences_rows_are_independent():
    """Prompts A, B repeated, 2 return sequences each: rows come in transformers' order (each prompt's 2 rows
    together), and the first new tokens of a prompt's two rows are distributed as p x p: independent draws, not
    one draw shared by the group (cells (a, a) only) nor rows of one group reading each other's randomness."""
    prompts, groups, settings = [PROMPT, [4, 2, 1, 0]], 6000, WARPINGS["plain"]
    ids = torch.tensor(prompts * groups)  # [A, B, A, B, ...]
    out = TARGET.generate(ids, num_return_sequences=2, do_sample=True, batch_spec="eqspec",
                          assistant_model=DRAFTS["perturbed"], num_assistant_tokens=2, max_new_tokens=NEW,
                          generator=torch.Generator().manual_seed(1234), return_dict_in_generate=True, **settings)
    assert torch.equal(out.sequences[:, :len(PROMPT)], ids.repeat_interleave(2, 0))
    with torch.no_grad():
        logits = TARGET(torch.tensor(prompts)).logits[:, -1:]
        first = torch.softmax(warped(settings)(logits)[:, 0], -1)  # [2, V] p of A's, B's first token
    pairs = out.sequences[:, len(PROMPT)].view(-1, 2)  # [2 * groups, 2] a group's two rows
    for which, p in enumerate(first.tolist()):
        product = {(a, b): p[a] * p[b] for a in range(V) for b in range(V)}
        rejects, report = chi_square_rejects(pairs[which::2], product)
        assert not rejects, f"prompt {which}: {report}"


def test_top_h_keeps_the_distribution():
    """Top-H (an entropy-bounded top set per position) reads a position's scores only: applied per position like
    the other warpers, the samples follow the target's warped law."""
    settings = dict(top_h=0.7)
    rejects, report = chi_square_rejects(speculative_samples(DRAFTS["perturbed"], settings), exact_joint(settings))
    assert not rejects, report
