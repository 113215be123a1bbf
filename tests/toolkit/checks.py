"""The central check of the greedy properties, shared by every module that runs it (equivalence, exspec, static
shapes, speculation="auto"): a call's rows against the plain-greedy oracle, and its statistics against the forwards
the models really ran."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from tests.toolkit.counting import ForwardCount
from tests.toolkit.oracle import free_run_tokens, left_pad, plain_greedy


def check_against_plain_greedy(target, draft, req, data, strategy="eqspec", max_k=None, **generate_kwargs):
    """Runs `req` (`tests.toolkit.strategies.requests`) through `target.generate` with `draft`: stop ids drawn from
    what the target really generates (so that rows stop inside accepted blocks), a pad id sometimes equal to an EOS
    or to a generated token. Every row equals plain greedy of its prompt alone through its first stop, then pad;
    the stats count what plain greedy gives and what the models ran. Returns the stats."""
    prompts, k, max_new = req["prompts"], req["k"], req["max_new"]
    free_run = free_run_tokens(target, prompts, max_new)
    eos = tuple(data.draw(st.lists(st.sampled_from(free_run), min_size=0, max_size=2, unique=True), label="eos"))
    pad = data.draw(st.sampled_from([0, eos[0] if eos else 0, free_run[0]]), label="pad")
    expected = [plain_greedy(target, p, max_new, eos or None) for p in prompts]

    ids, mask = left_pad(prompts, pad)
    with ForwardCount(target, draft) as forwards:
        out = target.generate(
            ids, attention_mask=mask, assistant_model=draft, batch_spec=strategy, num_assistant_tokens=k,
            max_new_tokens=max_new, do_sample=False, eos_token_id=list(eos) or None, pad_token_id=pad,
            return_dict_in_generate=True, **generate_kwargs,
        )
    seqs, stats = out.sequences, out.spec_stats
    width = ids.shape[1]
    assert seqs.shape == (len(prompts), width + max(len(e) for e in expected))
    assert torch.equal(seqs[:, :width], ids), "prompts must come back as given"
    for row, new in enumerate(expected):
        got = seqs[row, width:].tolist()
        assert got[: len(new)] == new, f"row {row}: diverged from plain greedy"
        assert all(t == pad for t in got[len(new):]), f"row {row}: expected pad_token_id after the row's end"

    # The statistics, against what really happened: the tokens plain greedy gives, the forwards the models ran.
    lengths = [len(e) for e in expected]
    assert stats.new_tokens.tolist() == lengths
    assert (stats.accepted_tokens <= stats.drafted_tokens).all()
    assert (stats.drafted_tokens <= (max_k or k) * stats.row_rounds).all()
    for row, new in enumerate(expected):
        # the prefill gives a row its first token; each verify round it takes part in, 1 to max_k + 1 more
        assert -(-(len(new) - 1) // ((max_k or k) + 1)) <= stats.row_rounds[row] <= len(new) - 1, f"row {row}"
        stopped_in_block = stats.target_tokens[row] == stats.row_rounds[row]
        assert stats.target_tokens[row] in (stats.row_rounds[row], stats.row_rounds[row] + 1)
        if stopped_in_block:  # only a stop id inside an accepted block ends a row on a draft token
            assert eos and new[-1] in eos
    if strategy.startswith("eqspec"):  # every row is in the batch from the first round until it finishes
        assert stats.rounds == stats.row_rounds.max() and stats.target_prefill_calls == 1
    # Each model decodes with a cache of its own: one (model, cache) group per model, two with the draft's
    # prefill (skipped when max_new_tokens is 1). The target's: a prefill per admission, a verify per round; its
    # rows: every prompt once, then the rows active in each round.
    calls = forwards.calls
    assert sum(n for n, _ in calls.values()) == stats.target_forward_calls + stats.draft_forward_calls
    # With static shapes a verify covers all rows of its row bucket (idle ones included), else the active rows.
    static = generate_kwargs.get("cache_implementation") == "static" or "compile_config" in generate_kwargs
    verified_rows = int(sum(stats.forward_rows))
    assert verified_rows >= stats.row_rounds.sum() and len(stats.forward_rows) == stats.rounds
    if static:  # each a power of two (or the caller's max_batch_size), never growing
        assert all(b & (b - 1) == 0 or b == stats.cache_rows for b in stats.forward_rows)
        assert stats.forward_rows == sorted(stats.forward_rows, reverse=True)
    else:
        assert verified_rows == stats.row_rounds.sum()
    target_side = [stats.rounds + stats.target_prefill_calls, len(prompts) + verified_rows]
    target_keys = [key for key, count in calls.items() if key[0] is target and count == target_side]
    assert target_keys, f"no target forwards match the stats {target_side}: {list(calls.values())}"
    rest = {key: count for key, count in calls.items() if key != target_keys[0]}
    assert all(module is draft for module, _ in rest), "forwards of the target with a third cache"
    assert [n for n, _ in rest.values()] == ([stats.draft_forward_calls] if stats.draft_forward_calls else [])
    return stats
