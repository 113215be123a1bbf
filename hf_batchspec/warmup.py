"""Compile once at start-up: `warmup` runs the compiled path on synthetic prompts so that a service's later calls
compile nothing.

What a compiled call's graphs depend on, and how warm-up covers it:
- the row count: dynamic (`runner.rows_dynamic`, the inputs' rows and the caches' rows), so one compile at the
  largest row bucket serves every batch size from 1 to `max_batch_size` (a compiled call never runs fewer than 2
  rows where more are allowed);
- the cache length (slots per row, every decode forward attends over all of them): warm-up compiles the one that
  holds `max_length` and registers it for the target (`runner.add_warmed_length`); a later call whose longest prompt
  plus `max_new_tokens` fits takes it (`decoding.static_length`) instead of its own bucket;
- the draft length k: a program per verify width, so warm-up runs one call per width the call's settings can reach
  (`draft_buckets`: k alone for a constant k with `speculation="always"`; powers of two below the cap and rounds
  of no draft where the length varies: `speculation="auto"` (the default), a heuristic schedule, a
  confidence threshold). A call with `speculation="auto"` compiles its fused round programs of every width
  itself, before its first round (`_Decoder._compile_widths`): warm-up's first call (a round of no draft) does so
  for the fused programs, and its calls per width cover the rest (per-forward graphs, the other schedules).

Each warm call decodes 2 new tokens per prompt: one round, which runs the round's program whatever the budgets
(a constant k verifies k drafts even where no row drafts; see `_Decoder._round`). Warm calls use a constant k
with `speculation="always"` (a fixed cost model for the round of no draft), so that no measured round time of a
compile reaches `speculation="auto"`'s cost estimates and the heuristic schedule's state in the draft's
generation_config is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import CompileConfig

from . import plan, validation
from .api import BatchSpeculativeGenerationMixin
from .decoding import draft_buckets, draft_cap, static_length, static_rows
from .errors import BatchSpecError
from .profiling import ForwardTimer
from .runner import add_warmed_length, input_device
from .speculation import CostModel

# Set by warm-up itself: a caller's value would be overridden, so it is refused.
_OWN_ARGUMENTS = ("inputs", "input_ids", "attention_mask", "inputs_embeds", "max_new_tokens", "assistant_model",
                  "streamer")
# A round of no draft (k = 0) in a call whose draft length varies: a fixed cost model makes `speculation="auto"`
# decide without measuring (each warm call's one round has budgets of 0 anyway: 2 new tokens).
_FIXED_COSTS = CostModel(target_call=1.0, target_token=0.0, draft_call=1.0, draft_token=0.0)


@dataclass(frozen=True)
class WarmupReport:
    graphs: int  # graphs dynamo compiled during warm-up (0 when everything was compiled before)
    seconds: float  # wall time of the warm-up
    calls: int  # warm generate calls run
    cache_length: int  # slots per row of the warmed caches (later calls up to this length reuse them)
    draft_lengths: tuple[int, ...]  # verify draft widths warmed (0: a round in which no row drafts)
    rows: int  # rows of the warmed forwards; every row count from 1 to max_batch_size shares their graphs


def warmup(
    target: torch.nn.Module,
    draft: torch.nn.Module | None = None,
    *,
    max_batch_size: int,
    max_length: int,
    compile_config: CompileConfig | None = None,
    num_assistant_tokens: int | None = None,
    **generate_kwargs,
) -> WarmupReport:
    """Compile every graph later `generate(..., compile_config=...)` calls of up to `max_batch_size` prompts and up
    to `max_length` tokens (longest prompt + max_new_tokens, transformers' `max_length`) will run, once, at start-up.

    Pass what the later calls pass: `draft` as `assistant_model` (None with `prompt_lookup_num_tokens=` or
    `assistant_early_exit=` in `generate_kwargs`), the same `compile_config` (default: the target's
    generation_config's, else `CompileConfig()`), `num_assistant_tokens` and the other generate settings
    (`speculation`, `num_assistant_tokens_schedule`, `assistant_confidence_threshold`, `batch_spec`,
    `eos_token_id`, processors...): they decide which programs run. Returns a `WarmupReport` (graphs compiled,
    seconds, the cache length and draft widths warmed).

    Fully covered: greedy rounds without host work (each round one compiled program; `spec_stats.fused_rounds`).
    With host work inside a round (logits processors, stopping criteria, a confidence threshold, sampling,
    recorded scores) the per-forward graphs warm for the widths warm-up runs, and a later round of another width
    may still compile."""
    kwargs = _checked(target, draft, max_batch_size, max_length, compile_config, num_assistant_tokens,
                      generate_kwargs)
    compile_config = kwargs.pop("compile_config")
    lookup = kwargs.get("prompt_lookup_num_tokens") is not None
    widths = _draft_widths(target, draft, num_assistant_tokens, kwargs)
    cache_length = static_length(max_length)
    add_warmed_length(target, cache_length)  # before the warm calls: they size their caches by it too
    strategy = kwargs.pop("batch_spec", None) or "exspec"
    pool = dict(max_batch_size=max_batch_size) if strategy == "exspec" else {}
    vocab = validation.vocab_size(*[m for m in (target, draft) if m is not None])
    # one round (the prefill commits the first token); with a confidence threshold the round's width is what the
    # draft was sure of, so budgets of the largest width let it draft (some widths are warmed, not all)
    threshold = plan.resolve_draft_schedule(kwargs, _settings_model(target, draft, kwargs))[1]
    new_tokens = min(2 + (max(widths) if threshold else 0), max_length - 1)
    width = max_length - new_tokens
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (max_batch_size, width), generator=generator)
    if kwargs.get("pad_token_id") is None and target.generation_config.pad_token_id is None:
        kwargs["pad_token_id"] = 0  # any id: the prompts carry no padding (silences transformers' warning)
    eos = plan.CallSettings(kwargs, kwargs.get("generation_config"), target.generation_config).get("eos_token_id")
    if eos is None or len(torch.atleast_1d(torch.as_tensor(eos))) <= 4:
        # a row that stopped on its first token runs no round: without stop ids every warm call runs one. Up to 4
        # stop ids share the graph of none (`decoding.static_stop_ids`); more keep their own, so they stay.
        kwargs["eos_token_id"] = None
    kwargs.setdefault("do_sample", False)
    device = input_device(target)
    ids = ids.to(device)
    before = _unique_graphs()
    with ForwardTimer() as timer:  # no models: a wall clock only (forward hooks would be guarded on by the graphs)
        for k in widths:
            call = dict(kwargs, speculation="always", num_assistant_tokens_schedule="constant")
            if k == 0:  # a round of no draft, in a call whose draft length varies: fixed costs, its largest width
                k, call["speculation"] = widths[-1], _FIXED_COSTS
            call["prompt_lookup_num_tokens" if lookup else "num_assistant_tokens"] = k
            target.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=draft, batch_spec=strategy,
                            max_new_tokens=new_tokens, compile_config=compile_config, **pool, **call)
    rows = static_rows(max(max_batch_size, 2), max_batch_size if strategy == "exspec" else 1 << 62)
    return WarmupReport(graphs=_unique_graphs() - before, seconds=timer.wall_seconds, calls=len(widths),
                        cache_length=cache_length, draft_lengths=tuple(widths), rows=rows)


def _unique_graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _positive(name: str, value, least: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise BatchSpecError(f"warmup: {name} must be an integer of at least {least}; got {value!r}.")


def _checked(target, draft, max_batch_size, max_length, compile_config, num_assistant_tokens,
             generate_kwargs: dict) -> dict:
    """The warm calls' generate kwargs, once every argument is checked (before any work)."""
    if not isinstance(target, BatchSpeculativeGenerationMixin):
        raise BatchSpecError(f"warmup: the target ({type(target).__name__}) has no batch speculative generate; "
                             "call hf_batchspec.enable(target) first (later calls go through the same generate).")
    _positive("max_batch_size", max_batch_size)
    # the longest prompt plus max_new_tokens: at least a 1-token prompt and 2 new tokens, so that a round runs
    _positive("max_length", max_length, least=3)
    if num_assistant_tokens is not None:
        _positive("num_assistant_tokens", num_assistant_tokens)
    own = [name for name in _OWN_ARGUMENTS if name in generate_kwargs]
    if own:
        raise BatchSpecError(f"warmup makes its own prompts and calls: drop {', '.join(own)} (the draft model is its "
                             "second argument; max_length bounds the later calls' prompt + new tokens).")
    if generate_kwargs.get("disable_compile"):
        raise BatchSpecError("warmup: disable_compile=True compiles nothing, so there is nothing to warm up.")
    if compile_config is None:
        compile_config = getattr(target.generation_config, "compile_config", None) or CompileConfig()
    if not isinstance(compile_config, CompileConfig):
        raise BatchSpecError(f"warmup: compile_config must be a transformers.CompileConfig; got "
                             f"{type(compile_config).__name__}.")
    strategy = generate_kwargs.get("batch_spec")
    if strategy not in (None, "exspec", "eqspec"):
        raise BatchSpecError(f"warmup: batch_spec={strategy!r} has no compiled path; use 'exspec' or 'eqspec'.")
    others = [name for name in ("prompt_lookup_num_tokens", "assistant_early_exit")
              if generate_kwargs.get(name) is not None]
    if draft is None and not others:
        raise BatchSpecError("warmup needs a draft source, as generate does: a draft model, or "
                             "prompt_lookup_num_tokens=... or assistant_early_exit=... in the keyword arguments.")
    if len(others) + (draft is not None) > 1:
        named = (["a draft model"] if draft is not None else []) + others
        raise BatchSpecError(f"warmup: {' and '.join(named)} are two draft sources; a call drafts from one.")
    if "prompt_lookup_num_tokens" in others:
        _positive("prompt_lookup_num_tokens", generate_kwargs["prompt_lookup_num_tokens"])
        if num_assistant_tokens is not None:
            raise BatchSpecError("warmup: prompt_lookup_num_tokens is prompt lookup's draft length; drop "
                                 "num_assistant_tokens.")
    return dict(generate_kwargs, compile_config=compile_config)


def _settings_model(target, draft, kwargs: dict):
    """The model whose generation_config holds the draft's settings, as generate reads them (an early exit: the
    target's; prompt lookup: none)."""
    return draft if draft is not None else target if kwargs.get("assistant_early_exit") is not None else None


def _draft_widths(target, draft, num_assistant_tokens, kwargs: dict) -> list[int]:
    """The verify draft widths later calls with these settings can reach, as `_Decoder` buckets them: k alone for a
    constant k that always drafts; else the powers of two below the cap, the cap, and 0 (a round of no draft,
    first in the list)."""
    settings = _settings_model(target, draft, kwargs)
    call = plan.CallSettings(dict(kwargs, num_assistant_tokens=num_assistant_tokens), kwargs.get("generation_config"),
                             target.generation_config)
    k = kwargs.get("prompt_lookup_num_tokens") or plan.resolve_num_assistant_tokens(call, settings)
    schedule, threshold = plan.resolve_draft_schedule(kwargs, settings)
    cap = draft_cap(k, schedule)
    # speculation unset may mean "auto" (the default): only "always" keeps one width
    varies = kwargs.get("speculation") != "always" or schedule != "constant" or bool(threshold)
    widths = [int(w) for w in draft_buckets(cap, all_lengths=varies)]
    return [0] + widths if varies else widths
