"""`python -m hf_batchspec bench ...` (also the `hf-batchspec` console script)."""

import sys


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("bench", "demo"):
        raise SystemExit("usage: hf-batchspec {bench,demo} [options]   (-h after the command for its options)")
    if argv[0] == "bench":
        from .bench import main as bench
        bench(argv[1:])
    else:
        from .demo import main as demo
        demo(argv[1:])


if __name__ == "__main__":
    main()
