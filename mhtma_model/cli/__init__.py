"""The command lines, apart from the library modules they drive: ``mhtma-train`` (:mod:`.train`),
``mhtma-eval`` (:mod:`.evaluate`), ``mhtma-inpaint`` (:mod:`.inpaint`), ``mhtma-masks`` (:mod:`.masks`),
``mhtma-export`` (:mod:`.export`) and ``mhtma-ui`` (:mod:`.ui`); :mod:`.options` holds what they share.
``python -m mhtma_model.<command>`` (``train``, ``evaluate``, ``inpaint``, ``mask_set``, ``export``, ``ui``)
runs the same ``main``."""
