"""``python -m mhtma_model.export`` = ``mhtma-export``; the command line is :mod:`mhtma_model.cli.export`."""
import sys

from .cli.export import main

if __name__ == "__main__":
    sys.exit(main())
