"""``python -m mhtma_model.inpaint`` = ``mhtma-inpaint``; the command line is :mod:`mhtma_model.cli.inpaint`."""
import sys

from .cli.inpaint import main

if __name__ == "__main__":
    sys.exit(main())
