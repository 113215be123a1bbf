"""Draft sources behind one interface: what the decode loop asks of whatever proposes tokens.

A drafter proposes up to k tokens per row in one fixed-shape tensor (`[B, k]`, with per-row budgets saying how
many are real) and, when it samples, the distributions it drew them from (`[B, k, V]`); a deterministic drafter
returns none, and acceptance treats its q as one-hot on the draft. It then hears what the loop did: which
prompts were admitted into which slots (refill), how long each row is after a verify (rollback) and which slots
left (row selection). The loop speaks only to this interface; transformers' `CandidateGenerator` classes and
vLLM's proposers have the same shape.

- `ModelDrafter`: a draft model with its own ragged cache (`assistant_model=`), sequential 1-token steps.
- `ModelDrafter` over `early_exit_model(target, n)`: the target's first n layers, its norm and head
  (`assistant_early_exit=n`, LayerSkip-style self-speculation); its cache holds those n layers only.
- `LookupDrafter`: prompt lookup (`prompt_lookup_num_tokens=k`): each row copies what followed the last earlier
  occurrence of its newest n-gram; no model, no cache, no forward.
- `OtherTokenizerDrafter`: a draft model with a tokenizer of its own (`assistant_tokenizer=`): a `ModelDrafter`
  in the draft's token space, the text converted on the host each round (`retokenize.py`).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from . import retokenize
from .acceptance import sample
from .errors import UnsupportedModelError
from .lookup import ngram_drafts
from .masks import packed_positions
from .processors import ScoreProcessing, probabilities
from .runner import ModelRunner, decoder_layers
from .scheduling import ActiveRows, to_device


@dataclass(frozen=True)
class DraftSource:
    """What drafts for a call: a draft model (`assistant_model`, or `early_exit_model(target, n)`), with
    `tokenizers` (target's, draft's) when it has a tokenizer of its own; or prompt lookup with n-grams up to
    `lookup_ngram` (transformers' max_matching_ngram_size)."""

    model: torch.nn.Module | None = None
    lookup_ngram: int | None = None
    tokenizers: tuple | None = None

    @property
    def stages(self) -> bool:
        """Whether its drafter can prefill a prompt into a staging row ahead of a free slot (see
        `RaggedCache.staged_lengths`). A draft with another tokenizer keeps per-slot text state, so it cannot."""
        return self.tokenizers is None

    def build(self, slots: int, cache_len: int, options: "DraftOptions", compile_config=None, *, prompts=None,
              prompt_lengths=None, max_new: int = 0, k: int = 0, staging: int = 0):
        """`prompts` [N, P] right-packed target ids with `prompt_lengths` [N]: a drafter with another tokenizer
        sizes its own cache from their text. `staging`: cache rows beyond the slots, for prompts admitted ahead."""
        if self.tokenizers is not None:
            return OtherTokenizerDrafter(self.model, *self.tokenizers, slots, options, prompts, prompt_lengths,
                                         max_new, k)
        if self.model is not None:
            return ModelDrafter(self.model, slots, cache_len, options, compile_config, staging)
        return LookupDrafter(self.lookup_ngram, options.static)


@dataclass
class Proposal:
    drafts: torch.Tensor  # [B, k'] proposed tokens; column j of row b counts only when j < budget[b]
    probs: torch.Tensor | None  # [B, k', V] the distributions they were sampled from (None: deterministic)
    budget: torch.Tensor  # [B] drafts each row offers for verification (cut where the source had fewer)
    forwards: int = 0  # draft-model forwards this took


@dataclass(frozen=True)
class DraftOptions:
    """What a drafter needs to know about the call."""

    do_sample: bool
    generator: torch.Generator | None
    processing: ScoreProcessing  # the call's processors: a sampling draft model draws from processed scores
    confidence_threshold: float | None  # a model drafter stops a row after a draft less likely than this
    static: bool  # every forward in a few fixed shapes (compiled)
    fused: bool = False  # with a compile config: a greedy draft's k steps compile into one program


class ModelDrafter:
    """A causal LM that drafts: k sequential 1-token forwards on its own ragged cache, rows in the target's
    slots. The draft lags the target by what it has not run yet (the pending token, and after a fully
    accepted round the draft's own last draft), so its first step re-feeds those."""

    def __init__(self, model: torch.nn.Module, slots: int, cache_len: int, options: DraftOptions, compile_config=None,
                 staging: int = 0):
        self.options = options
        self.runner = ModelRunner(model, slots, cache_len, compile_config, options.static, staging)
        # A greedy draft without a confidence threshold decides nothing on the host between its steps, so the
        # decoder compiles its k steps into the round's program (`greedy_steps` inside `decoding.greedy_round`):
        # one call (one CUDA graph) per round, the steps' masks, gathers and argmaxes inside it.
        self._fuses = (compile_config is not None and options.fused and not options.do_sample
                       and not options.confidence_threshold)

    @property
    def cache(self):
        return self.runner.cache

    def set_on_rows(self, on_rows) -> None:
        self.runner.on_rows = on_rows

    def admit(self, prompts, positions, limits, width: int, cache_rows, ids: np.ndarray, slots: np.ndarray,
              lengths: np.ndarray) -> int:  # forwards run
        """Prefill admitted prompts (`prompts` [n, P] right-packed) into cache rows `slots`. Its logits over the
        prompt are never used: its first step runs the pending first token."""
        self.runner.forward(prompts, positions, limits, width, keep=1, rows=cache_rows, row_ids=ids, prefill=True)
        self.cache.set_lengths(lengths, rows=slots)
        return 1

    def defer(self, slots: np.ndarray) -> None:  # [n] cache rows (host)
        """Admit prompts into cache rows `slots` without a forward: their rows hold nothing yet, so the next
        draft step runs every token of them (the catch-up of `_first_step`). Worth it while drafting is off
        (`speculation="auto"`): a prefill the draft may never use is not paid, and if drafting resumes the
        catch-up costs about what the prefill would have. Eager only: a compiled first step has a few widths."""
        self.cache.set_lengths(np.zeros(len(slots), dtype=np.int64), rows=slots)

    def _first_step(self, rows: ActiveRows, tokens: torch.Tensor):
        """The first draft step's query: ([B, w] tokens, [B, w] positions, kv_len, logits to keep, [B] the column
        of each row's pending token among them)."""
        device, static = tokens.device, self.options.static
        # The first step feeds every committed token the draft has not run: after a fully accepted round the
        # token before the pending one (the draft's own last draft, never run), after rounds without drafts
        # all tokens since it last drafted. Rows with fewer missing tokens get padding queries past their
        # end, which write scratch slots nobody reads; each row's logits are taken at its pending token.
        missing_h = rows.lengths_h - self.cache.lengths  # [B] >= 1: the pending token at least
        width = int(missing_h.max())
        if static:  # a catch-up width from a few buckets, set by live rows only: 2 in steady state (1 or
            # 2 tokens missing), so the first step has one shape whether or not the last round was fully accepted
            width = max(2, 1 << (int(missing_h[rows.live_h].max(initial=1)) - 1).bit_length())
            missing_h = np.minimum(missing_h, width)  # an idle row's queries are never read
        missing = to_device(missing_h, device)
        positions = (rows.lengths - missing).unsqueeze(1) + torch.arange(width, device=device)  # [B, w]
        step_input = tokens[rows.ids.unsqueeze(1), positions.clamp(min=0, max=tokens.shape[1] - 1)]
        kv_len = self.cache.top_slot(rows.lengths_h - missing_h) + width
        if static:  # every column: one shape, whichever columns the rows' pending tokens sit in
            keep, pick = 0, missing_h - 1
        else:
            columns = np.unique(missing_h - 1)  # the columns some row's pending token sits in
            keep = 1 if len(columns) == 1 else to_device(columns, device)
            pick = np.searchsorted(columns, missing_h - 1)
        return step_input, positions, kv_len, keep, to_device(pick, device)

    def fused_inputs(self, rows: ActiveRows, tokens: torch.Tensor) -> tuple | None:
        """The tensors `greedy_steps` takes besides the runner and k (`[B, w]` tokens and positions, `[B]`
        lengths, limits and pick), for the decoder, which compiles the steps into its round's program; None
        where the steps do not fuse (then `propose` runs them)."""
        if not self._fuses or self.runner.on_rows is not None:
            return None
        step_input, positions, _, _, pick = self._first_step(rows, tokens)
        return step_input, positions, rows.lengths, rows.limits, pick

    def propose(self, rows: ActiveRows, tokens: torch.Tensor, k: int, budget: torch.Tensor) -> Proposal:
        """Up to k drafts per row, cut where a row's draft fell below the confidence threshold (fewer than k
        columns when every row stopped early). `tokens` [N+1, T] is the loop's token buffer."""
        device = tokens.device
        if k == 0:
            return Proposal(torch.empty((len(rows), 0), dtype=torch.long, device=device), None, budget)
        threshold = self.options.confidence_threshold
        top = self.cache.top_slot(rows.lengths_h)
        step_input, positions, kv_len, keep, pick = self._first_step(rows, tokens)
        per_row = not isinstance(keep, int) or keep != 1  # the first step's logits: one column per row to pick
        drafts, probs = [], []
        for j in range(k):  # the draft is sequential: one forward per draft token
            logits = self.runner.forward(step_input, positions, rows.limits, kv_len, keep=keep, row_ids=rows.ids_h)
            if j == 0 and per_row:
                logits = logits[torch.arange(len(rows), device=logits.device), pick.to(logits.device)].unsqueeze(1)
            keep = 1
            last = logits[:, -1].to(device)  # [B, V]
            sampling = self.options.do_sample
            step_probs = probabilities(self.options.processing.draft(last)) if sampling or threshold else None
            if sampling:
                probs.append(step_probs)
                drafts.append(sample(step_probs, self.options.generator))
            else:
                drafts.append(last.argmax(-1))
            if threshold:
                # transformers' ConfidenceCriteria, per row: the unsure draft is kept, the next ones are not
                unsure = step_probs.gather(1, drafts[-1].unsqueeze(1)).squeeze(1) < threshold
                budget = torch.where(unsure, torch.minimum(budget, torch.full_like(budget, j + 1)), budget)
                if j + 1 < k and bool((budget <= j + 1).all()):  # a sync per draft step, only with a threshold
                    break
            step_input = drafts[-1].unsqueeze(1)
            positions = (rows.lengths + j).unsqueeze(1)  # d_{j+1} sits at position length + j
            kv_len = top + j + 1
        return Proposal(torch.stack(drafts, 1), torch.stack(probs, 1) if probs else None, budget, len(drafts))

    def rollback(self, lengths_h: np.ndarray, old_lengths: np.ndarray, steps: int) -> None:
        """After a verify: the draft keeps what it ran (pending + d_1..d_{steps-1}) that was accepted. A round
        without drafts leaves its cache as it was (it catches up when it next drafts)."""
        if steps:
            self.cache.set_lengths(np.minimum(lengths_h - 1, old_lengths + steps - 1))

    def select_rows(self, index: torch.Tensor) -> None:
        self.cache.select_rows(index)

    def copy_rows(self, sources: np.ndarray, targets: np.ndarray) -> None:  # [n], [n] cache rows (host)
        self.cache.copy_rows(sources, targets)

    def left_align(self, offsets: np.ndarray) -> None:
        self.cache.left_align(offsets)


def greedy_steps(
    runner: ModelRunner,  # static shapes: every forward over all rows and the whole cache
    first_input: torch.Tensor,  # [B, w] the tokens the draft has not run, ending at each row's pending token
    positions: torch.Tensor,  # [B, w] their positions
    lengths: torch.Tensor,  # [B] committed tokens per row
    limits: torch.Tensor,  # [B] highest position id of each row
    pick: torch.Tensor,  # [B] the column of each row's pending token in `first_input`
    k: int,
) -> torch.Tensor:  # [B, k] drafts
    """A greedy draft's k sequential steps as one function of device tensors, for torch.compile: the same
    forwards `ModelDrafter.propose` runs one by one."""
    rows = torch.arange(first_input.shape[0], device=first_input.device)
    logits = runner.forward(first_input, positions, limits, 0)  # [B, w, V] (static: kv_len is the whole cache)
    drafts = [logits[rows, pick.to(logits.device)].argmax(-1).to(first_input.device)]
    for j in range(1, k):
        logits = runner.forward(drafts[-1].unsqueeze(1), (lengths + j - 1).unsqueeze(1), limits, 0, keep=1)
        drafts.append(logits[:, -1].argmax(-1).to(first_input.device))
    return torch.stack(drafts, 1)


class LookupDrafter:
    """Prompt lookup decoding, batched: drafts are copies of each row's own earlier tokens (`lookup.py`). No
    forward and no cache: admission, rollback and row selection need nothing, and a row without a match offers
    no drafts (its budget is cut to 0) and gets the target's own token that round."""

    def __init__(self, max_ngram: int, static: bool = False):
        self.max_ngram, self.static = max_ngram, static

    def set_on_rows(self, on_rows) -> None:
        pass

    def admit(self, *args, **kwargs) -> int:
        return 0

    def fused_inputs(self, rows: ActiveRows, tokens: torch.Tensor) -> None:
        return None  # no greedy draft steps to compile into the decoder's round

    def propose(self, rows: ActiveRows, tokens: torch.Tensor, k: int, budget: torch.Tensor) -> Proposal:
        drafts, counts = ngram_drafts(tokens, rows.ids, rows.lengths, k, self.max_ngram, budget)  # [B, k], [B]
        if not self.static:
            # The verify is only as wide as the longest match, not k: a second host sync in the round, which on
            # a CPU (a verify's cost grows with its tokens) pays many times over. Static shapes keep k columns.
            drafts = drafts[:, : int(counts.max())]
        return Proposal(drafts, None, counts)

    def rollback(self, *args) -> None:
        pass

    def select_rows(self, index: torch.Tensor) -> None:
        pass

    def copy_rows(self, sources: np.ndarray, targets: np.ndarray) -> None:  # [n], [n] cache rows (host)
        pass

    def left_align(self, offsets: np.ndarray) -> None:
        pass


@dataclass
class DraftRows:
    """The batch's rows as a draft with its own tokens sees them: `ActiveRows`' fields, in draft positions."""

    ids: torch.Tensor  # [B] token-buffer row of each slot (original prompt index)
    ids_h: np.ndarray  # [B]
    lengths: torch.Tensor  # [B] committed draft tokens of each row's text
    lengths_h: np.ndarray  # [B]
    live_h: np.ndarray  # [B]
    limits: torch.Tensor  # [B] highest position id the draft may see

    def __len__(self) -> int:
        return len(self.ids_h)


class OtherTokenizerDrafter:
    """A draft model with a tokenizer of its own (transformers' universal assisted decoding, batched; greedy).

    Each round the rows' committed text is re-encoded in the draft's tokens (one batched tokenizer call);
    the draft's cache keeps the longest prefix of what it already ran that still matches (by length, O(1)),
    catches up on the rest and drafts k tokens, whose text is re-encoded as target tokens (`retokenize.py`).
    Its cache rows are the target's slots, in the draft's own positions, sized from the prompts' text."""

    GROWTH = 8  # draft positions reserved per target position (a target token's text in draft tokens, at most)

    def __init__(self, model, target_tokenizer, draft_tokenizer, slots: int, options: DraftOptions,
                 prompts: torch.Tensor, prompt_lengths: np.ndarray, max_new: int, k: int):
        self.target_tokenizer, self.draft_tokenizer = target_tokenizer, draft_tokenizer
        # every prompt's draft ids, once: they size the cache here and are what admission prefills
        self.prompt_ids, self.prompt_lengths = retokenize.pad(retokenize.draft_view(
            target_tokenizer, draft_tokenizer, prompts.cpu().numpy(), prompt_lengths))  # [N, P_d], [N]
        self.capacity = self.prompt_ids.shape[1] + self.GROWTH * (max_new + k + 1) + 2
        options = dataclasses.replace(options, processing=ScoreProcessing([]))  # target-vocabulary processors
        self.inner = ModelDrafter(model, slots, self.capacity, options)
        self.device = self.inner.runner.device
        limit = min(self.capacity, getattr(model.config.get_text_config(), "max_position_embeddings", None)
                    or self.capacity) - 1
        self.limits = torch.full((slots,), limit, dtype=torch.long, device=self.device)
        self.tokens = torch.zeros((len(prompt_lengths) + 1, self.capacity), dtype=torch.long, device=self.device)
        self.ran = np.zeros((slots, self.capacity), dtype=np.int64)  # draft ids in its cache, per slot

    @property
    def cache(self):
        return self.inner.cache

    def set_on_rows(self, on_rows) -> None:
        self.inner.set_on_rows(on_rows)

    def admit(self, prompts, positions, limits, width: int, cache_rows, ids: np.ndarray, slots: np.ndarray,
              lengths: np.ndarray) -> int:
        """Prefill the admitted prompts' draft ids (the target-space arguments are not its own)."""
        draft_lengths = self.prompt_lengths[ids]
        padded = self.prompt_ids[ids, : int(draft_lengths.max())]
        prompts_d = to_device(padded, self.device)  # [n, P_d]
        self.tokens[to_device(ids, self.device), : padded.shape[1]] = prompts_d
        self.ran[slots, : padded.shape[1]] = padded
        return self.inner.admit(prompts_d, packed_positions(len(ids), padded.shape[1], self.device),
                                self.limits[: len(ids)], padded.shape[1], cache_rows, ids, slots, draft_lengths)

    def fused_inputs(self, rows: ActiveRows, tokens: torch.Tensor) -> None:
        return None  # no greedy draft steps to compile into the decoder's round

    def propose(self, rows: ActiveRows, tokens: torch.Tensor, k: int, budget: torch.Tensor) -> Proposal:
        if k == 0:
            return Proposal(torch.empty((len(rows), 0), dtype=torch.long, device=tokens.device), None, budget)
        committed = tokens[rows.ids, : int(rows.lengths_h.max())].cpu().numpy()  # [B, T] a second host sync
        padded, new_len = retokenize.pad(retokenize.draft_view(self.target_tokenizer, self.draft_tokenizer,
                                                               committed, rows.lengths_h))
        room = new_len <= self.capacity - k - 1  # a row whose text outgrew the draft's cache drafts nothing
        new_len = np.minimum(new_len, self.capacity - k - 1)
        padded = padded[:, : self.capacity]
        kept = retokenize.common_prefix(self.ran, self.cache.lengths, padded, new_len)
        self.cache.set_lengths(np.minimum(kept, new_len - 1))  # the last token runs again: its logits draft
        self.ran[:, : padded.shape[1]] = padded
        self.tokens[rows.ids, : padded.shape[1]] = to_device(padded, self.device)
        view = DraftRows(rows.ids, rows.ids_h, to_device(new_len, self.device), new_len, rows.live_h, self.limits)
        proposal = self.inner.propose(view, self.tokens, k, budget)
        drafts = proposal.drafts.cpu().numpy()  # [B, k'] draft ids: a third host sync
        steps = drafts.shape[1]
        ran_cols = new_len[:, None] + np.arange(steps - 1)  # [B, k'-1] what the draft ran after the text
        self.ran[np.arange(len(rows))[:, None], ran_cols] = drafts[:, : steps - 1]
        self.cache.set_lengths(new_len + steps - 1)
        target_ids, counts = retokenize.target_proposal(self.target_tokenizer, self.draft_tokenizer, committed,
                                                        rows.lengths_h, padded, new_len, drafts, k)
        counts = np.where(room & rows.live_h, counts, 0)
        width = int(counts.max(initial=0))  # known on the host: the verify is only as wide as the longest proposal
        return Proposal(to_device(target_ids[:, :width], self.device), None,
                        torch.minimum(proposal.budget, to_device(counts, self.device)), proposal.forwards)

    def rollback(self, *args) -> None:
        pass  # the next round keeps the prefix of what the draft ran that the committed text still starts with

    def select_rows(self, index: torch.Tensor) -> None:
        self.inner.select_rows(index)
        self.ran = self.ran[index.cpu().numpy()]
        self.limits = self.limits[: len(index)]

    def copy_rows(self, sources: np.ndarray, targets: np.ndarray) -> None:  # [n], [n] cache rows (host)
        self.inner.copy_rows(sources, targets)
        self.ran[targets] = self.ran[sources]

    def left_align(self, offsets: np.ndarray) -> None:
        raise NotImplementedError("a draft with another tokenizer has positions of its own: no shared layout")


def early_exit_model(target: torch.nn.Module, layers: int) -> torch.nn.Module:
    """The target's first `layers` decoder layers with its embeddings, final norm and LM head, as a model of its
    own class sharing every weight (nothing is copied): a LayerSkip-style draft. Its config says `layers`
    layers, so it gets a cache of that many layers. Refused where the decoder layers cannot be found."""
    total = decoder_layers(target.config)
    if not isinstance(layers, int) or isinstance(layers, bool) or not 1 <= layers < total:
        raise UnsupportedModelError(f"assistant_early_exit={layers!r}: the draft must keep between 1 and "
                                    f"{total - 1} of the target's {total} decoder layers.")
    stacks = [name for name, child in target.named_modules()
              if isinstance(child, torch.nn.ModuleList) and len(child) == total]
    if len(stacks) != 1 or target.config.get_text_config() is not target.config:
        raise UnsupportedModelError(
            f"assistant_early_exit: cannot find the decoder layers of {type(target).__name__} to cut (a text-only "
            "causal LM with one list of decoder layers is needed): draft with assistant_model=... instead.")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = layers
    for name in ("layer_types", "n_layer", "num_layers"):  # per-layer lists and other names of the layer count
        value = getattr(config, name, None)
        if isinstance(value, list):
            setattr(config, name, value[:layers])
        elif isinstance(value, int) and not isinstance(value, bool) and value == total:
            setattr(config, name, layers)
    *path, leaf = stacks[0].split(".")
    view = _shallow(target, config)
    parent = view
    for name in path:  # copies along the path to the layer list; everything beside it is shared
        child = _shallow(getattr(parent, name), config)
        setattr(parent, name, child)
        parent = child
    setattr(parent, leaf, torch.nn.ModuleList(list(getattr(parent, leaf))[:layers]))
    return view


def _shallow(module: torch.nn.Module, config) -> torch.nn.Module:
    """A copy of `module` that shares its parameters, buffers and children but not the table of children (so
    replacing a child in the copy leaves the original whole), with `config` where the module holds one."""
    twin = copy.copy(module)
    twin._modules = dict(module._modules)
    # Bound to the original, not the copy: its compiled forward, and an instance-level forward wrapper (accelerate's
    # dispatch hook), which would run the original's full stack of layers. The copy runs its class's forward; the
    # layers it shares keep their own hooks.
    for name in ("_compiled_call", "forward"):
        twin.__dict__.pop(name, None)
    if getattr(module, "config", None) is not None:
        twin.config = config
    return twin
