"""``python -m mhtma_model.evaluate`` = ``mhtma-eval``; the command line is :mod:`mhtma_model.cli.evaluate`."""
import sys

from .cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
