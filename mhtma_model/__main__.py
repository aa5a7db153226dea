"""``python -m mhtma_model [--config FILE.yaml] [section.key=value ...]`` = ``python -m mhtma_model.train``."""
import sys

from .cli.train import main

sys.exit(main())
