"""`python -m hf_batchspec {bench,demo} ...`: the command line of `hf_batchspec.cli`."""

from .cli import main

if __name__ == "__main__":
    main()
