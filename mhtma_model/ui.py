"""``python -m mhtma_model.ui`` = ``mhtma-ui``; the command line is :mod:`mhtma_model.cli.ui`."""
import sys

from .cli.ui import main

if __name__ == "__main__":
    sys.exit(main())
