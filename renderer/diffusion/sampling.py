"""Gaussian diffusion for the guided-diffusion models: linear schedule, respaced steps, learned variances,
DDPM and DDIM sampling steps, CLIP guidance, and the notebooks' range and total-variation losses.

The released ImageNet models were trained with 1000 steps of the linear beta schedule (``1e-4`` to
``0.02`` scaled by ``1000 / steps``) and predict the noise and a value ``v`` in [-1, 1] that
interpolates the log variance between the posterior's (clipped) and ``log beta``.  Sampling may use
fewer steps: a subset of the trained timesteps, with the betas recomputed from the kept cumulative
alphas (the model still sees the original timestep numbers).

Guidance, as in the 2021 notebooks: at each step the model's prediction of the clean image,
blended with the current sample by ``sqrt(1 - alphā_t)``, is scored by CLIP over cutouts together
with a total-variation and a range loss; the negative gradient of that score with respect to the
sample shifts the DDPM mean by ``variance * grad`` (or, for DDIM, the predicted noise by
``-sqrt(1 - alphā_t) * grad``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

SAMPLERS = ("ddpm", "ddim")


def linear_betas(trained_steps: int = 1000) -> np.ndarray:
    scale = 1000 / trained_steps
    return np.linspace(scale * 0.0001, scale * 0.02, trained_steps, dtype=np.float64)


def kept_timesteps(trained_steps: int, steps: int, sampler: str) -> list[int]:
    """Which trained timesteps a run of ``steps`` uses: evenly spread (DDPM), or an even stride (DDIM)."""
    if not 1 <= steps <= trained_steps:
        raise ValueError(f"steps must be between 1 and {trained_steps}, got {steps}")
    if sampler == "ddim":
        for stride in range(1, trained_steps):
            if len(range(0, trained_steps, stride)) == steps:
                return list(range(0, trained_steps, stride))
        # no exact stride: fall back to the evenly spread set
    if steps == 1:
        return [trained_steps - 1]
    frac = (trained_steps - 1) / (steps - 1)
    return sorted({round(i * frac) for i in range(steps)})


@dataclass
class Out:
    mean: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor
    eps: torch.Tensor


class Diffusion:
    """The respaced process: index ``i`` (0 = cleanest) runs the model at trained timestep ``timesteps[i]``."""

    def __init__(self, timesteps: list[int], trained_steps: int = 1000):
        base = linear_betas(trained_steps)
        ac_all = np.cumprod(1.0 - base)
        last, betas = 1.0, []
        for t in timesteps:
            betas.append(1 - ac_all[t] / last)
            last = ac_all[t]
        self.timesteps = list(timesteps)
        self.betas = np.array(betas, dtype=np.float64)
        self.ac = np.cumprod(1.0 - self.betas)
        self.ac_prev = np.append(1.0, self.ac[:-1])
        self.post_var = self.betas * (1.0 - self.ac_prev) / (1.0 - self.ac)
        self.post_log_var = np.log(np.append(self.post_var[1], self.post_var[1:])) if len(self.betas) > 1 \
            else np.log(np.maximum(self.post_var, 1e-20))
        self.coef1 = self.betas * np.sqrt(self.ac_prev) / (1.0 - self.ac)
        self.coef2 = (1.0 - self.ac_prev) * np.sqrt(1.0 - self.betas) / (1.0 - self.ac)

    def __len__(self) -> int:
        return len(self.timesteps)

    @staticmethod
    def _at(arr: np.ndarray, i: int, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(float(arr[i]), device=like.device, dtype=torch.float32)

    def q_sample(self, x0: torch.Tensor, i: int, noise: torch.Tensor) -> torch.Tensor:
        return self._at(np.sqrt(self.ac), i, x0) * x0 + self._at(np.sqrt(1 - self.ac), i, x0) * noise

    def p_mean_variance(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, i: int,
                        clip_denoised: bool = True) -> Out:
        t = torch.full((x.shape[0],), float(self.timesteps[i]), device=x.device)
        out = model(x, t).float()
        eps, v = out[:, :3], out[:, 3:]
        if v.shape[1] == 3:  # learned range
            min_log, max_log = self._at(self.post_log_var, i, x), self._at(np.log(self.betas), i, x)
            frac = (v + 1) / 2
            log_var = frac * max_log + (1 - frac) * min_log
        else:  # fixed, as the release's small variance
            log_var = self._at(self.post_log_var, i, x).expand_as(eps)
        x0 = self._at(np.sqrt(1 / self.ac), i, x) * x - self._at(np.sqrt(1 / self.ac - 1), i, x) * eps
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean = self._at(self.coef1, i, x) * x0 + self._at(self.coef2, i, x) * x
        return Out(mean=mean, log_variance=log_var, pred_xstart=x0, eps=eps)

    def clamped(self, out: Out, x: torch.Tensor, i: int) -> Out:
        """``out`` (from an unclipped pass) with the clean-image prediction clipped to [-1, 1] and the mean
        recomputed, as a clipped pass would give: one model call serves both guidance and the step."""
        x0 = out.pred_xstart.detach().clamp(-1, 1)
        mean = self._at(self.coef1, i, x) * x0 + self._at(self.coef2, i, x) * x.detach()
        return Out(mean=mean, log_variance=out.log_variance.detach(), pred_xstart=x0, eps=out.eps.detach())

    def ddpm_step(self, out: Out, x: torch.Tensor, i: int, noise: torch.Tensor,
                  grad: torch.Tensor | None) -> torch.Tensor:
        mean = out.mean if grad is None else out.mean + out.log_variance.exp() * grad
        return mean + (0.5 * out.log_variance).exp() * noise if i > 0 else mean

    def ddim_step(self, out: Out, x: torch.Tensor, i: int, noise: torch.Tensor, grad: torch.Tensor | None,
                  eta: float = 0.0) -> torch.Tensor:
        a, a_prev = self._at(self.ac, i, x), self._at(self.ac_prev, i, x)
        x0 = out.pred_xstart
        eps = (x * a.rsqrt() - x0) / (1 / a - 1).sqrt()
        if grad is not None:
            eps = eps - (1 - a).sqrt() * grad
            x0 = x * a.rsqrt() - (1 / a - 1).sqrt() * eps
        sigma = eta * ((1 - a_prev) / (1 - a)).sqrt() * (1 - a / a_prev).sqrt()
        mean = x0 * a_prev.sqrt() + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        return mean + sigma * noise if i > 0 else mean


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference to the right and lower neighbours (edges replicated), per image."""
    x = F.pad(x, (0, 1, 0, 1), mode="replicate")
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx ** 2 + dy ** 2).mean(dim=(1, 2, 3))


def range_loss(x: torch.Tensor) -> torch.Tensor:
    """How far outside [-1, 1] the prediction strays (squared), per image."""
    return (x - x.clamp(-1, 1)).pow(2).mean(dim=(1, 2, 3))
