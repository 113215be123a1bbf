"""Argument types and shared options of the command line: each refuses a bad value with a usage error before
anything loads, so a long run never starts on a typo."""

from __future__ import annotations

import argparse

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # --dtype's names

K_HELP = ("drafts per row and round. 3 is a middle choice for the bundled pair: the best constant draft length "
          "measured is 4-5 at batch 1 to 8 and 2-3 at batch 32 (docs/results.md); the library's own default, 5, "
          "follows the paper: pass --k 5 to run with it")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help; the description and epilog as written (their line breaks kept)."""

    def _get_help_string(self, action):
        if action.default is None:  # unset means "not used", or a default the help itself describes
            return action.help
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    """An option's positive integer (`--k`, `--threads`): 0, negatives and words are usage errors."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def batch_sizes(text: str) -> list[int]:
    """`--batch-sizes`: comma-separated positive integers, e.g. 1,2,4,8."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1 or len(set(sizes)) < len(sizes):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, each once, e.g. 1,2,4,8; "
                                         f"got {text!r}")
    return sizes


def name_list(choices: tuple[str, ...], option: str, groups: dict[str, tuple[str, ...]] | None = None):
    """The parser of an option taking comma-separated names from `choices` (an empty string for none); a name in
    `groups` stands for its names. Each name once, in the order given."""
    groups = groups or {}

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in choices and name not in groups]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown method {', '.join(map(repr, unknown))} for {option}: expected "
                                             f"comma-separated names from {', '.join((*choices, *groups))}, "
                                             f"or '' for none")
        return list(dict.fromkeys(part for name in names for part in groups.get(name, (name,))))
    return parse


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """`--threads`: shared by every command, since CPU timings mean little without the thread count."""
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads(), metavar="N",
                        help="torch CPU threads (torch.set_num_threads), set before the models load; the default is "
                             "torch's current count. More threads than free cores can be many times slower (on a "
                             "small or shared machine, try 1)")


def set_threads(threads: int) -> None:
    """Set torch's thread count only when it changes it (setting it again after work has run warns)."""
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Which models and prompts: shared by `bench` and `demo`."""
    parser.add_argument("--target", help="HF model id or local path (default: the bundled demo target)")
    parser.add_argument("--draft", help="HF model id or local path (default: the bundled demo draft)")
    parser.add_argument("--prompts", help="JSONL in Spec-Bench format (turns[0]); default: bundled code prompts")
