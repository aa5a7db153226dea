"""A real (untrained) tiny generator checkpoint, written with the project's own config and checkpoint code."""
from pathlib import Path

import torch

from mhtma_model.checkpoint import save_checkpoint
from mhtma_model.config import Config, build_generator

TINY = dict(base_channels=4, heads=2, patch_size=3)


def make_tiny_checkpoint(path, sketch=False, seed=0, **model):
    """Save a 4-base-channel generator (``model`` overrides the TINY settings) in the documented payload."""
    config = Config.from_dict({"model": {**TINY, **model, "sketch": sketch}})
    torch.manual_seed(seed)
    generator = build_generator(config.model)
    payload = {
        "format": "mhtma", "version": 1, "config": config.to_dict(), "generator": generator.state_dict(),
        "discriminator": None, "opt_g": None, "opt_d": None, "step": 0, "epoch": 0, "rng": None,
        "early_stop": None, "metrics": {},
    }
    save_checkpoint(path, payload)
    return Path(path)
