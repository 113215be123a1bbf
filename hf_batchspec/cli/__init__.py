"""The command line, `hf-batchspec {bench,demo} ...` (also `python -m hf_batchspec`).

The top-level parser only answers help and refuses unknown commands: a command's own options are parsed by that
command's module (`bench`, `demo`), imported only when it runs, so `-h` stays fast.
"""

from __future__ import annotations

import argparse
import sys

COMMANDS = {
    "bench": "time HF baselines, eqspec and exspec side by side",
    "demo": "batch-decode the bundled pair, checked against greedy, timed",
}


def parser() -> argparse.ArgumentParser:
    """The top-level parser: help and errors only; a command's own options are parsed by that command."""
    top = argparse.ArgumentParser(prog="hf-batchspec", description="Batch speculative decoding for HF transformers.",
                                  epilog="Run `hf-batchspec COMMAND -h` for a command's options.")
    commands = top.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", title="commands",
                                  required=True)
    for name, summary in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    return top


def main(argv=None) -> None:
    """Run the command `argv[0]` with the rest of `argv` (default: sys.argv[1:])."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:  # the rest of argv is the command's, `-h` included
        if argv[0] == "bench":
            from .bench import main as command
        else:
            from .demo import main as command
        return command(argv[1:])
    parser().parse_args(argv)  # -h/--help: usage and exit 0; no or an unknown command: usage on stderr, exit 2
