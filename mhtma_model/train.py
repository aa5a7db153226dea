"""``python -m mhtma_model.train`` = ``mhtma-train``; the command line is :mod:`mhtma_model.cli.train`."""
import sys

from .cli.train import main

if __name__ == "__main__":
    sys.exit(main())
