"""``python -m mhtma_model.mask_set`` = ``mhtma-masks``; the command line is :mod:`mhtma_model.cli.masks`."""
import sys

from .cli.masks import main

if __name__ == "__main__":
    sys.exit(main())
