"""The draft sources, one row each: which generate argument asks for a source, which arguments it owns, how the
call's settings become its `DraftSource`, what it refuses once the call is known, its cost prior for
`speculation="auto"`, and its drafter. `validation` and `api` read this table; the decode loop never does.

Adding a source: a file in this package with its `Drafter` subclass, and a `SourceSpec` appended to `SOURCES`.
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from .. import vocab_map
from ..errors import BatchSpecError, UnsupportedModelError
from ..rules import check_value
from ..speculation import CostModel
from .base import Drafter, DraftOptions
from .early_exit import early_exit_model
from .gemma4_assistant import Gemma4AssistantDrafter, is_gemma4_assistant, store_layers
from .lookup import LookupDrafter
from .model import ModelDrafter
from .mtp import MTPDrafter, mtp_layers
from .other_tokenizer import OtherTokenizerDrafter

if TYPE_CHECKING:
    from ..plan import CallSettings


@dataclass(frozen=True)
class DraftSource:
    """What drafts for a call: a registry entry (`kind`) and what it was resolved to: a draft model (`model`: an
    `assistant_model`, or `early_exit_model(target, n)`), with `tokenizers` (target's, draft's) when it has a
    tokenizer of its own; or prompt lookup with n-grams up to `lookup_ngram`."""

    kind: str
    model: torch.nn.Module | None = None
    lookup_ngram: int | None = None
    tokenizers: tuple | None = None

    @property
    def spec(self) -> "SourceSpec":
        return SOURCES_BY_KIND[self.kind]

    @property
    def stages(self) -> bool:
        """Whether its drafter can prefill a prompt into a staging row ahead of a free slot (`Drafter.stages`)."""
        return self.spec.drafter.stages

    def build(self, slots: int, cache_len: int, options: DraftOptions, compile_config=None, *, prompts=None,
              prompt_lengths=None, max_new: int = 0, k: int = 0, staging: int = 0, target=None) -> Drafter:
        """The call's drafter over `slots` cache rows (`staging` more for prompts admitted ahead). `prompts` [N, P]
        right-packed target ids with `prompt_lengths` [N]: a drafter with another tokenizer sizes its cache from
        their text. `target`: the target's `ModelRunner`, whose cache a drafter may read (never write)."""
        return self.spec.build(self, slots, cache_len, options, compile_config, prompts=prompts,
                               prompt_lengths=prompt_lengths, max_new=max_new, k=k, staging=staging, target=target)


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # the source's name (also what its measured costs are kept under)
    label: str  # what it is, in messages
    asked_by: str  # the generate argument that turns it on (transformers' name)
    drafter: type  # its `Drafter` subclass
    # the call's arguments it reads (besides `asked_by`): refused when set for another source, and taken out of the
    # call before transformers prepares it (so that transformers builds no batch-1 candidate generator of its own)
    owns: tuple[str, ...]
    # (target, assistant_model, plan.CallSettings) -> (DraftSource, the draft length the source fixes or None)
    resolve: Callable
    # (source, slots, cache_len, options, compile_config, **sizes) -> Drafter
    build: Callable
    requires: str | None = None  # chosen over another spec with the same `asked_by` when this argument is set
    selects: Callable | None = None  # (assistant_model) -> bool: chosen over another spec when this says so
    # (feature, message): what it cannot go with (a feature of `plan.call_features`: "static", "eqspec-realign", ...)
    refuses: tuple[tuple[str, str], ...] = ()
    # (source, do_sample) -> None: what it refuses that no feature names (a pair's shared vocabulary, ...)
    check: Callable | None = None
    model_drafts: bool = True  # its rounds run draft forwards (prompt lookup's cost none)
    shared: tuple[str, ...] = ()  # arguments of `owns` that other parts of the call read too (never taken out)

    def prior(self, target: torch.nn.Module, source: DraftSource, compiled: bool) -> CostModel:
        """`speculation="auto"`'s prior for this source's rounds (see `CostModel.estimate`)."""
        if not self.model_drafts:
            return dataclasses.replace(CostModel.estimate(target, target, compiled), draft_call=0.0, draft_token=0.0)
        return CostModel.estimate(target, source.model, compiled)


# -- the sources ---------------------------------------------------------------------------------------------

def _resolve_model(target, draft, settings: "CallSettings"):
    from ..validation import check_pair

    check_pair(target, draft)
    return DraftSource("model", model=draft), None


def _build_model(source, slots, cache_len, options, compile_config, *, staging, **_):
    return ModelDrafter(source.model, slots, cache_len, options, compile_config, staging)


def _resolve_other_tokenizer(target, draft, settings: "CallSettings"):
    from ..validation import check_causal_lm

    tokenizer, assistant_tokenizer = settings.kwargs.get("tokenizer"), settings.kwargs["assistant_tokenizer"]
    if tokenizer is None:
        raise BatchSpecError("assistant_tokenizer needs the target's tokenizer too, as in transformers: pass "
                             "tokenizer=<the target's tokenizer>.")
    for name, value in (("tokenizer", tokenizer), ("assistant_tokenizer", assistant_tokenizer)):
        if not (callable(value) and hasattr(value, "batch_decode")):
            raise BatchSpecError(f"{name} must be a transformers tokenizer; got {type(value).__name__}.")
    check_causal_lm(target, "target model")
    check_causal_lm(draft, "assistant_model")
    return DraftSource("other-tokenizer", model=draft, tokenizers=(tokenizer, assistant_tokenizer)), None


def _check_other_tokenizer(source: DraftSource, do_sample: bool) -> None:
    if do_sample:  # the draft samples shared tokens only (vocab_map.py): refuse a pair that shares too few
        vocab_map.check_overlap(vocab_map.vocab_map(*source.tokenizers))


_OTHER_TOKENIZER_REFUSES = (
    ("static", "compile_config / cache_implementation='static' are not supported with a draft of another tokenizer "
               "(its text round trip runs on the host every round): drop them."),
    ("eqspec-realign", "batch_spec='eqspec-realign' cannot realign a draft with positions of its own: use 'eqspec' "
                       "or 'exspec'."),
)


def _build_other_tokenizer(source, slots, cache_len, options, compile_config, *, prompts, prompt_lengths, max_new,
                           k, target=None, **_):
    # q spans the target's logits, which a padded vocabulary makes wider than its tokenizer's ids
    head = target.model.get_output_embeddings() if target is not None else None
    width = int(head.weight.shape[0]) if head is not None else None
    return OtherTokenizerDrafter(source.model, *source.tokenizers, slots, options, prompts, prompt_lengths,
                                 max_new, k, target_vocab=width)


def _resolve_early_exit(target, draft, settings: "CallSettings"):
    from ..validation import check_causal_lm

    check_causal_lm(target, "target model")
    try:
        return DraftSource("early-exit", model=early_exit_model(target, settings.get("assistant_early_exit"))), None
    except UnsupportedModelError as error:
        raise BatchSpecError(str(error)) from None


def _refuse_draft_model_settings(settings: "CallSettings", why: str) -> None:
    """A source whose draft length is fixed refuses the draft model's knobs, saying `why` it has no use for them."""
    for name in ("num_assistant_tokens", "assistant_confidence_threshold"):
        if settings.kwargs.get(name) is not None:
            raise BatchSpecError(f"`{name}` configures a draft model; {why}: drop `{name}`.")


DEFAULT_MAX_MATCHING_NGRAM_SIZE = 2  # transformers' default for prompt lookup


def _resolve_lookup(target, draft, settings: "CallSettings"):
    from ..validation import check_causal_lm

    check_causal_lm(target, "target model")
    k, ngram = settings.get("prompt_lookup_num_tokens"), settings.get("max_matching_ngram_size")
    ngram = DEFAULT_MAX_MATCHING_NGRAM_SIZE if ngram is None else ngram
    for name, value in (("prompt_lookup_num_tokens", k), ("max_matching_ngram_size", ngram)):
        check_value(name, value)
    _refuse_draft_model_settings(settings, "prompt lookup drafts prompt_lookup_num_tokens copied tokens per round")
    return DraftSource("lookup", lookup_ngram=ngram), k


def _build_lookup(source, slots, cache_len, options, compile_config, **_):
    return LookupDrafter(source.lookup_ngram, options.static, fuses=options.fused)  # compiled greedy


# The MTP layers loaded for a target, by target (weakly): `MtpModel.from_pretrained` reads the checkpoint's files, which
# a call should not pay again.
_MTP_MODULES: "weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module]" = weakref.WeakKeyDictionary()


def _resolve_mtp(target, draft, settings: "CallSettings"):
    from transformers.modeling_layers import MtpModel

    from ..validation import check_causal_lm

    check_causal_lm(target, "target model")
    check_value("use_mtp", settings.get("use_mtp"))
    layers = mtp_layers(target)
    if layers < 1:
        raise BatchSpecError(f"use_mtp=True: {type(target).__name__}'s config declares no multi-token-prediction "
                             "layers (num_mtp_layers): draft with assistant_model=... or prompt_lookup_num_tokens=... "
                             "instead.")
    _refuse_draft_model_settings(settings, f"use_mtp drafts one token per MTP layer ({layers} per round)")
    if target not in _MTP_MODULES:
        device = next(target.get_decoder().layers[-1].parameters()).device  # transformers' choice: the last layer's
        try:
            _MTP_MODULES[target] = MtpModel.from_pretrained(target, device_map={"": device}).eval()
        except (OSError, RuntimeError, ValueError, AttributeError, KeyError) as error:
            raise BatchSpecError(
                f"use_mtp=True: the MTP layers of {type(target).__name__} could not be loaded from its checkpoint "
                f"({target.config.name_or_path!r}), as transformers loads them: {error}") from None
    return DraftSource("mtp", model=_MTP_MODULES[target]), layers


def _eager_only(what: str) -> tuple[tuple[str, str], ...]:
    """The refusals of a source that drafts from the verify's hidden states: compiled rounds (their programs do not
    return them) and the paper's realigned layout (its rows move every round)."""
    return (("static", f"compile_config / cache_implementation='static' are not served with {what} yet: it drafts "
                       "from the verify's hidden states, which the compiled round programs do not return. Drop them "
                       "(the eager path serves it at any batch size)."),
            ("eqspec-realign", f"batch_spec='eqspec-realign' does not realign {what}: use 'eqspec' or 'exspec'."))


def _build_mtp(source, slots, cache_len, options, compile_config, *, staging, **_):
    return MTPDrafter(source.model, slots, cache_len, options, staging)


def _resolve_gemma4_assistant(target, assistant, settings: "CallSettings"):
    from ..validation import check_pair

    if not type(target).__name__.startswith("Gemma4"):
        raise BatchSpecError(f"A Gemma 4 assistant drafts from a Gemma 4 target's keys, values and hidden states; the "
                             f"target is {type(target).__name__}: pass a Gemma 4 target, or a draft model of its own "
                             "kind as assistant_model.")
    layers = store_layers(target.config)
    if set(layers) != {"full_attention", "sliding_attention"}:
        raise BatchSpecError(f"A Gemma 4 assistant reads one full and one sliding layer's keys and values of the "
                             f"target; this target's config names {sorted(layers)} (kv_sharing_modes): it cannot be "
                             "served.")
    if assistant.config.backbone_hidden_size != target.config.get_text_config().hidden_size:
        raise BatchSpecError(f"The assistant was made for a target of hidden size "
                             f"{assistant.config.backbone_hidden_size}; this target's is "
                             f"{target.config.get_text_config().hidden_size}: pass the assistant made for it.")
    check_pair(target, assistant, own_cache=False)  # it reads the target's keys and values
    return DraftSource("gemma4-assistant", model=assistant), None


def _build_gemma4_assistant(source, slots, cache_len, options, compile_config, *, staging, target, **_):
    return Gemma4AssistantDrafter(source.model, target, slots, options, staging)


SOURCES: tuple[SourceSpec, ...] = (
    SourceSpec("other-tokenizer", "a draft with another tokenizer", "assistant_model", OtherTokenizerDrafter,
               owns=("assistant_tokenizer", "tokenizer"), shared=("tokenizer",), requires="assistant_tokenizer",
               resolve=_resolve_other_tokenizer, build=_build_other_tokenizer, check=_check_other_tokenizer,
               refuses=_OTHER_TOKENIZER_REFUSES),
    SourceSpec("gemma4-assistant", "a Gemma 4 assistant", "assistant_model", Gemma4AssistantDrafter, owns=(),
               selects=is_gemma4_assistant, resolve=_resolve_gemma4_assistant, build=_build_gemma4_assistant,
               refuses=_eager_only("a Gemma 4 assistant")),
    SourceSpec("model", "a draft model", "assistant_model", ModelDrafter, owns=(),
               resolve=_resolve_model, build=_build_model),
    SourceSpec("lookup", "prompt lookup", "prompt_lookup_num_tokens", LookupDrafter, owns=("max_matching_ngram_size",),
               resolve=_resolve_lookup, build=_build_lookup, model_drafts=False),
    SourceSpec("early-exit", "early exit (the target's first layers)", "assistant_early_exit", ModelDrafter, owns=(),
               resolve=_resolve_early_exit, build=_build_model),
    SourceSpec("mtp", "the target's multi-token-prediction layers", "use_mtp", MTPDrafter, owns=(),
               resolve=_resolve_mtp, build=_build_mtp, refuses=_eager_only("use_mtp")),
)
SOURCES_BY_KIND = {spec.kind: spec for spec in SOURCES}
# The generate arguments that ask for a draft, in the order a call's sources are listed (transformers' names).
ASKED_BY = tuple(dict.fromkeys(spec.asked_by for spec in SOURCES))


def choose(asked_by: str, given: Callable[[str], object], assistant_model=None) -> SourceSpec:
    """The source a call's draft argument selects: among the specs it asks for, the first whose `requires`
    argument the caller set or whose `selects` accepts the assistant, else the one that needs neither."""
    specs = [spec for spec in SOURCES if spec.asked_by == asked_by]
    return next(spec for spec in specs
                if (spec.requires is None or given(spec.requires) is not None)
                and (spec.selects is None or spec.selects(assistant_model)))


def resolve(asked_by: str, target, assistant_model, settings: "CallSettings") -> tuple[DraftSource, int | None]:
    """The call's `DraftSource` (and the draft length it fixes, or None): an argument another source owns, set
    by the caller, is refused first, so that nothing a call passes is silently ignored."""
    spec = choose(asked_by, settings.given, assistant_model)
    for other in SOURCES:
        for name in other.owns:
            if name not in spec.owns and name not in other.shared and settings.given(name) is not None:
                raise BatchSpecError(
                    f"{name} configures {other.label}, but this call drafts with {spec.label}: drop {name}, or "
                    f"pass {other.asked_by}=...{f' with {other.requires}=...' if other.requires else ''} instead "
                    f"of the other source.")
    return spec.resolve(target, assistant_model, settings)


def taken_out() -> tuple[str, ...]:
    """The draft arguments the decode loop serves and transformers' preparation must not see."""
    names = [spec.asked_by for spec in SOURCES if spec.asked_by != "assistant_model"]
    names += [name for spec in SOURCES for name in spec.owns if name not in spec.shared]
    return tuple(dict.fromkeys(names))
