"""One GAN update of the inpainting model: the networks, their optimisers, the precision they run at, and
the discriminator and generator steps on a batch (I_gt, M[, S]) (paper Sec. III-B, IV-A)::

    I_c, I_r = G(I_gt, M[, S])                     I_out = I_r ⊙ M + I_gt ⊙ (1 − M)
    D step:  L_D = hinge(D(I_gt, M), D(I_out.detach(), M))   [+ gp_weight · GP  for wgan-gp]
    G step:  L_G = 1.2·|I_c − I_gt|₁ + 1.0·|I_out − I_gt|₁ + λp·L_perc(I_c, I_gt) + 0.01·(−D(I_out, M))

|·|₁ is the mean absolute error over the WHOLE image (all pixels, all channels), as the paper's Eq. 2
writes ‖I_c − I_gt‖₁ and DeepFill v2 does; for I_out the known pixels are exact, so its term only
counts hole pixels but is normalised by the image size. Real and fake are scored on the same local
crop. Adam(β = 0.5, 0.9), lr 1e-4 for both.

Mixed precision (``train.amp``, CUDA only): fp16 autocast with one gradient scaler per network. The loop
around it is :class:`mhtma_model.train.Trainer`.
"""
from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel

from .config import Config, build_discriminator, build_generator
from .losses import generator_loss, gradient_penalty, hinge_d_loss, wgan_d_loss
from .networks import composite


class GanStep:
    """Generator and discriminator (``g_raw``/``d_raw``; ``generator``/``discriminator`` are the same or
    their DDP wrappers), Adam optimisers, gradient scalers; ``step(image, mask, sketch)`` updates D then G.

    The weights are initialised from ``torch.manual_seed(config.run.seed)``, identical on every rank.
    """

    def __init__(self, cfg: Config, device: torch.device, perceptual=None):
        self.cfg, self.perceptual = cfg, perceptual
        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        self.g_raw = self.generator = build_generator(cfg.model).to(device)
        self.d_raw = self.discriminator = build_discriminator(cfg.model, cfg.data.size).to(device)
        betas = tuple(cfg.train.betas)
        self.opt_g = torch.optim.Adam(self.g_raw.parameters(), lr=cfg.train.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.d_raw.parameters(), lr=cfg.train.lr_d, betas=betas)
        self.use_amp = cfg.train.amp and device.type == "cuda"
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.weights = {"l1_coarse": cfg.loss.l1_coarse, "l1_out": cfg.loss.l1_out,
                        "perceptual": cfg.loss.perceptual, "adversarial": cfg.loss.adversarial}

    def parts(self) -> dict:
        """The stateful parts, as :func:`mhtma_model.checkpoint.training_payload` and
        :func:`~mhtma_model.checkpoint.restore_training` take them."""
        return {"generator": self.g_raw, "discriminator": self.d_raw, "opt_g": self.opt_g, "opt_d": self.opt_d,
                "scaler_g": self.scaler_g, "scaler_d": self.scaler_d}

    def wrap_distributed(self, device: torch.device) -> None:
        """DDP wrappers for the trained forwards (the unwrapped networks stay in ``g_raw``/``d_raw``)."""
        ids = [device.index] if device.type == "cuda" else None
        self.generator = DistributedDataParallel(self.g_raw, device_ids=ids)
        self.discriminator = DistributedDataParallel(self.d_raw, device_ids=ids)

    def train(self) -> None:
        self.generator.train()
        self.discriminator.train()

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.use_amp else contextlib.nullcontext()

    def step(self, image, mask, sketch) -> dict:
        """One D update and one G update on a batch -> the named loss terms and scores (tensors) to log."""
        with self.autocast():  # generator forward once; the D step uses it detached
            coarse, refined = self.generator(image, mask, sketch)
            output = composite(refined, image, mask)
        boxes = self.d_raw.crop_boxes(mask)
        d_terms = self._d_step(image, output, mask, boxes)
        g_terms = self._g_step(image, coarse, output, mask, boxes)
        return {**{f"loss/g_{k}": v for k, v in g_terms.items()}, **d_terms}

    def _d_step(self, image, output, mask, boxes) -> dict:
        """Real and fake in one forward, same masks and local crops -> the D terms to log."""
        loss = self.cfg.loss
        self.opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            scores = self.discriminator(torch.cat([image, output.detach()]), torch.cat([mask, mask]),
                                        boxes=torch.cat([boxes, boxes]))
            real_s, fake_s = scores.float().chunk(2)
            d_adv = hinge_d_loss(real_s, fake_s) if loss.gan == "hinge" else wgan_d_loss(real_s, fake_s)
        d_loss, gp = d_adv, None
        if loss.gan == "wgan-gp":
            gp = gradient_penalty(self.d_raw, image.float(), output.detach().float(), mask, weight=loss.gp_weight)
            d_loss = d_adv + gp
        self.scaler_d.scale(d_loss).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        terms = {"loss/d_total": d_loss, "loss/d_adv": d_adv, "score/real": real_s.mean(), "score/fake": fake_s.mean()}
        if gp is not None:
            terms["loss/d_gp"] = gp
        return terms

    def _g_step(self, image, coarse, output, mask, boxes) -> dict:
        """D frozen, scored with the unwrapped D (no DDP sync needed for a frozen net) -> the G loss terms."""
        self.d_raw.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        with self.autocast():
            fake_g = self.d_raw(output, mask, boxes=boxes).float()
            terms = generator_loss(coarse.float(), output.float(), image, fake_g, perceptual=self.perceptual,
                                   weights=self.weights)
        self.scaler_g.scale(terms["total"]).backward()
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        self.d_raw.requires_grad_(True)
        return terms
