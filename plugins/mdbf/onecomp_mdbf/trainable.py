"""The trainable twin of an MDBF layer for the engine's block fine-tuning.

Every envelope is trained as a multiplicative correction (init 1), so one
learning rate fits layers of any magnitude; with a sign learning rate the
sign matrices of every path get real latents (init ±1) trained straight
through (identity gradient where |latent| ≤ 1). The forward multiplies by
the dense Σ_paths F·G: the same numbers as the inference layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from onecomp_core.contract import TrainableLayer
from onecomp_core.kernels import pack_signs, ste_sign

from .envelope import Path, compose, gauge
from .result import MDBFResult

ENVELOPES = ("env_a", "env_qu", "env_qv", "env_b")


class MDBFTwin(TrainableLayer):
    """Trainable Σ_paths (S_A ⊙ A·Q_Uᵀ)(S_B ⊙ Q_V·Bᵀ) (+ bias)."""

    def __init__(self, result: MDBFResult, bias: torch.Tensor | None, sign_lr: float = 0.0):
        super().__init__()
        self.result, self.sign_lr = result, sign_lr
        paths = result.path_list()
        for label in ("sign_a", "sign_b"):
            value = torch.stack([getattr(p, label) for p in paths])
            if sign_lr > 0:
                setattr(self, label, nn.Parameter(value))
            else:
                self.register_buffer(label, value)
        self.thetas = nn.ParameterDict()
        for label in ENVELOPES:
            value = getattr(result, label).float().clone()
            self.register_buffer(label + "0", value)
            self.thetas[label] = nn.Parameter(torch.ones_like(value))
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def _signs(self, latent: torch.Tensor) -> torch.Tensor:
        return ste_sign(latent, clip=1.0) if self.sign_lr > 0 else latent

    def paths(self) -> list[Path]:
        env = {k: getattr(self, k + "0") * self.thetas[k] for k in ENVELOPES}
        s_a, s_b = self._signs(self.sign_a), self._signs(self.sign_b)
        return [
            Path(
                s_a[i], env["env_a"][i], env["env_qu"][i], s_b[i], env["env_qv"][i], env["env_b"][i]
            )
            for i in range(s_a.shape[0])
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float() @ compose(self.paths()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        groups = [{"params": list(self.thetas.values()), "lr": lr}]
        if self.sign_lr > 0:
            groups.append({"params": [self.sign_a, self.sign_b], "lr": self.sign_lr})
        return groups

    def to_result(self) -> MDBFResult | None:
        with torch.no_grad():
            paths = [gauge(Path(*(t.detach().cpu() for t in _fields(p)))) for p in self.paths()]
            env = {k: torch.stack([getattr(p, k) for p in paths]) for k in ENVELOPES}
            if not all(torch.isfinite(v).all() and v.abs().max() < 65504 for v in env.values()):
                return None
            return dataclasses.replace(
                self.result,
                sign_a=torch.stack([pack_signs(p.sign_a) for p in paths]),
                sign_b=torch.stack([pack_signs(p.sign_b) for p in paths]),
                **{k: v.to(torch.float16) for k, v in env.items()},
                finetuned=True,
            )


def _fields(p: Path) -> tuple[torch.Tensor, ...]:
    return (p.sign_a, p.env_a, p.env_qu, p.sign_b, p.env_qv, p.env_b)
