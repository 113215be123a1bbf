"""Every method the bench can run, ours and transformers' baselines, in one table.

`--ours` and `--methods` take their names, their defaults and their help from it, so a method is added in one
place. Our rows say exactly which call they make: `speculation` None and `constant_k` False are the library's
defaults, meaning the argument is not passed at all, so such a row shows what a user gets from a plain call (and
follows the defaults when they change); the other rows pass `speculation` and `num_assistant_tokens=--k`
explicitly, so they stay what they say. A baseline's rows (its name in the table and the JSON) are planned by
`bench.plan_runs`, since one baseline may make several rows (assisted: with HF's defaults and with k=--k).
"""

from __future__ import annotations

from typing import NamedTuple


class Method(NamedTuple):
    name: str  # the --ours or --methods name
    ours: bool  # True: a batch_spec call (--ours); False: transformers' own baseline besides greedy (--methods)
    default: bool  # run when the option is not given (not the MTP rows: the bundled target has no MTP layers)
    help: str
    row: str = ""  # ours: the method's name in the table and the JSON
    strategy: str = ""  # ours: batch_spec
    source: str = ""  # ours: the draft source: "draft" (--draft), "lookup", "early-exit", "other" (--other-draft), "mtp"
    speculation: str | None = None  # ours: "always" (constant k), "auto", or None: not passed (the library's default)
    constant_k: bool = False  # ours: num_assistant_tokens=--k passed (prompt lookup passes --lookup-tokens either way)
    compiled: bool = False  # ours: --compile adds `<row>-compiled`, the same call with compile_config


def ours(name, row, strategy, source, speculation, constant_k, compiled, help, default=True) -> Method:
    """One of our rows, its fields in the table's column order (help last: the longest)."""
    return Method(name, True, default, help, row, strategy, source, speculation, constant_k, compiled)


def baseline(name: str, help: str, default: bool = True) -> Method:
    """One of transformers' baselines: only a name, its help and whether it runs by default."""
    return Method(name, False, default, help)


METHODS = (
    ours("eqspec", "eqspec", "eqspec", "draft", "always", True, False, "every batch decoded together"),
    ours("eqspec-realign", "eqspec-realign (paper's layout)", "eqspec-realign", "draft", "always", True, False,
         "the paper's left-padded layout, realigned every round"),
    ours("exspec", "exspec", "exspec", "draft", "always", True, True, "the draft model, k=--k every round"),
    ours("exspec-auto", "exspec-auto", "exspec", "draft", "auto", True, True, "speculation='auto', k <= --k"),
    ours("exspec-lookup", "exspec-lookup", "exspec", "lookup", "always", True, False, "prompt lookup, no draft model"),
    ours("exspec-early-exit", "exspec-early-exit", "exspec", "early-exit", "always", True, False,
         "the target's first --early-exit layers draft"),
    ours("exspec-other-tokenizer", "exspec-other-tokenizer", "exspec", "other", "always", True, False,
         "--other-draft, a draft with a tokenizer of its own"),
    ours("exspec-mtp", "exspec-mtp", "exspec", "mtp", "always", False, False,
         "use_mtp=True: --target's own MTP layers draft, one token each (needs a checkpoint that has them)",
         default=False),
    ours("exspec-default", "exspec-default", "exspec", "draft", None, False, True,
         "the draft model with the library's defaults: no num_assistant_tokens, no speculation"),
    ours("exspec-lookup-default", "exspec-lookup-default", "exspec", "lookup", None, False, True,
         "prompt lookup with the defaults: prompt_lookup_num_tokens=--lookup-tokens, no speculation"),
    ours("exspec-early-exit-default", "exspec-early-exit-default", "exspec", "early-exit", None, False, True,
         "early exit with the defaults"),
    ours("exspec-other-default", "exspec-other-default", "exspec", "other", None, False, False,
         "--other-draft with the defaults"),
    baseline("assisted", "assisted generation at batch 1, with HF's defaults and with k=--k"),
    baseline("lookup", "prompt lookup decoding at batch 1"),
    baseline("early-exit", "early-exit self-speculation at batch 1"),
    baseline("uad", "universal assisted decoding: a draft with another tokenizer, at batch 1"),
    baseline("cb", "continuous batching at each batch size"),
    baseline("mtp", "use_mtp=True at batch 1: a --target whose checkpoint has MTP layers; not in the default",
             default=False),
)
OURS = {method.name: method for method in METHODS if method.ours}  # by --ours name
BASELINES = {method.name: method for method in METHODS if not method.ours}  # by --methods name
OUR_GROUPS = {"defaults": tuple(name for name, method in OURS.items() if method.speculation is None)}  # --ours aliases


def default_names(methods: dict[str, Method]) -> str:
    """The option's default: its methods marked `default`, comma-separated."""
    return ",".join(name for name, method in methods.items() if method.default)


def described(methods: dict[str, Method], separator: str) -> str:
    """`name (help)` for each method, for the option's help."""
    return separator.join(f"{name} ({method.help})" for name, method in methods.items())
