"""One GAN update of the inpainting model: the networks, their optimisers, the precision they run at, and
the discriminator and generator steps on a batch (I_gt, M[, S]) (paper Sec. III-B, IV-A)::

    I_c, I_r = G(I_gt, M[, S])                     I_out = I_r ⊙ M + I_gt ⊙ (1 − M)
    D step:  L_D = hinge(D(I_gt, M), D(I_out.detach(), M))   [+ gp_weight · GP  for wgan-gp]
    G step:  L_G = 1.2·|I_c − I_gt|₁ + 1.0·|I_out − I_gt|₁ + λp·L_perc(I_c, I_gt) + 0.01·(−D(I_out, M))

|·|₁ is the mean absolute error over the WHOLE image (all pixels, all channels), as the paper's Eq. 2
writes ‖I_c − I_gt‖₁ and DeepFill v2 does; for I_out the known pixels are exact, so its term only
counts hole pixels but is normalised by the image size. Real and fake are scored on the same local
crop. Adam(β = 0.5, 0.9), lr 1e-4 for both.

Precision (``train.amp``/``tf32``/``compile``, resolved by :mod:`mhtma_model.precision`): the networks'
forwards run under autocast (bf16, or fp16 with one GradScaler per network); the composite, the losses
(L1, perceptual, hinge/WGAN, gradient penalty) and the spectral norm run in fp32 outside autocast. TF32 is
set for the process when the step is built (CUDA). ``train.compile`` compiles the generator in place
(the discriminator stays eager: its spectral norm updates buffers in place every forward). The loop
around it is :class:`mhtma_model.training.Trainer`.
"""
from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

from .config import Config, build_discriminator, build_generator
from .losses import generator_loss, gradient_penalty, hinge_d_loss, wgan_d_loss
from .networks import composite
from .precision import autocast, compile_module, set_tf32, training_dtype


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
        self.device = device
        self.amp_dtype = training_dtype(cfg.train.amp, device)  # None = fp32
        self.use_amp = self.amp_dtype is not None
        scaled = self.amp_dtype == torch.float16  # bf16 has fp32's range: no loss scaling
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=scaled)
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=scaled)
        if device.type == "cuda":
            set_tf32(cfg.train.tf32)
        if cfg.train.compile:
            compile_module(self.g_raw)  # in place: g_raw's state dict and the DDP wrapper are unaffected
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

    @property
    def precision_name(self) -> str:
        """"bf16", "fp16" or "fp32" (+ "tf32" when CUDA fp32 matmuls may use it), for the start line."""
        name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "fp32")
        tf32 = self.device.type == "cuda" and self.cfg.train.tf32
        return name + (" (tf32 matmuls)" if tf32 and name == "fp32" else "")

    def autocast(self):
        """The networks' autocast context (a no-op at fp32)."""
        return autocast(self.device, self.amp_dtype)

    def step(self, image, mask, sketch) -> dict:
        """One D update and one G update on a batch -> the named loss terms and scores (tensors) to log."""
        with self.autocast():  # generator forward once; the D step uses it detached
            coarse, refined = self.generator(image, mask, sketch)
        coarse, output = coarse.float(), composite(refined.float(), image, mask)  # fp32 from here on
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
            fake_g = self.d_raw(output, mask, boxes=boxes)
        terms = generator_loss(coarse, output, image, fake_g.float(), perceptual=self.perceptual,
                               weights=self.weights)
        self.scaler_g.scale(terms["total"]).backward()
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        self.d_raw.requires_grad_(True)
        return terms
