"""``MultipathMDBFLinear``: the inference module of MDBF (the reference's 2l sign products a path).

For each path: z = Σ_k Q_V[:,k] ⊙ (S_B·(B[:,k] ⊙ x)), y += Σ_k A[:,k] ⊙ (S_A·(Q_U[:,k] ⊙ z)).
Buffers: ``sign_a`` (P, ⌈p·r/8⌉) and ``sign_b`` (P, ⌈r·m/8⌉) uint8 (the core's
:func:`~onecomp_core.kernels.pack_signs` layout, 1 bit per sign), fp16
``env_a`` (P, p, l), ``env_qu`` (P, r, l), ``env_qv`` (P, r, l), ``env_b``
(P, m, l), optional fp16 ``bias``. The l components of a path go through
each sign matrix as one batched product. ``cache_signs`` keeps the unpacked
signs (faster; one compute-dtype element per sign).
"""

from __future__ import annotations

import torch
from torch import nn

from onecomp_core.kernels import pack_signs, packed_size, unpack_signs

from .envelope import Path, compose

BUFFERS = ("sign_a", "sign_b", "env_a", "env_qu", "env_qv", "env_b")


class MultipathMDBFLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        envelopes: int,
        paths: int = 1,
        bias: bool = False,
        cache_signs: bool = False,
    ) -> None:
        super().__init__()
        p, m, r, env = out_features, in_features, rank, envelopes
        self.in_features, self.out_features, self.rank = m, p, r
        self.envelopes, self.paths, self.cache_signs = env, paths, cache_signs
        self.register_buffer(
            "sign_a", torch.full((paths, packed_size(p, r)), 255, dtype=torch.uint8)
        )
        self.register_buffer(
            "sign_b", torch.full((paths, packed_size(r, m)), 255, dtype=torch.uint8)
        )
        for label, rows in (("env_a", p), ("env_qu", r), ("env_qv", r), ("env_b", m)):
            self.register_buffer(label, torch.zeros(paths, rows, env, dtype=torch.float16))
        if bias:
            self.register_buffer("bias", torch.zeros(p, dtype=torch.float16))
        else:
            self.bias = None
        self._signs: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @classmethod
    def from_parts(
        cls, parts: dict[str, torch.Tensor], bias: torch.Tensor | None = None, **options
    ) -> MultipathMDBFLinear:
        """From the six stacked tensors (packed uint8 signs or ±1 (P, rows, cols))."""
        paths, p, env = parts["env_a"].shape
        r, m = parts["env_qu"].shape[1], parts["env_b"].shape[1]
        layer = cls(m, p, r, env, paths, bias is not None, **options)
        for label in BUFFERS:
            value = parts[label]
            if label.startswith("sign") and value.dtype != torch.uint8:
                value = torch.stack([pack_signs(s) for s in value])
            getattr(layer, label).copy_(value.to(getattr(layer, label).dtype))
        if bias is not None:
            layer.bias.copy_(bias.detach().reshape(-1).to(torch.float16))
        return layer

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._signs = None
        super()._load_from_state_dict(*args, **kwargs)

    def state_problems(self) -> list[str]:
        """Padding bits of every packed sign matrix must be +1 (else packed for another shape)."""
        found = []
        for label, rows, cols in (
            ("sign_a", self.out_features, self.rank),
            ("sign_b", self.rank, self.in_features),
        ):
            pad = (-rows * cols) % 8
            packed = getattr(self, label)
            mask = (1 << pad) - 1
            if pad and packed.numel() and bool(((packed[:, -1].int() & mask) != mask).any()):
                found.append(f"{label}: padding bits are not +1 (packed for another shape)")
        return found

    def signs(self, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per path (S_A (p × r), S_B (r × m)) as ±1 in ``dtype``."""
        cached = self._signs
        if (
            cached is not None
            and cached[0][0].dtype == dtype
            and cached[0][0].device == self.sign_a.device
        ):
            return cached
        p, m, r = self.out_features, self.in_features, self.rank
        out = [
            (unpack_signs(self.sign_a[i], p, r, dtype), unpack_signs(self.sign_b[i], r, m, dtype))
            for i in range(self.paths)
        ]
        self._signs = out if self.cache_signs else None
        return out

    def path_list(self) -> list[Path]:
        return [
            Path(s_a, self.env_a[i].float(), self.env_qu[i].float(), s_b,
                 self.env_qv[i].float(), self.env_b[i].float())
            for i, (s_a, s_b) in enumerate(self.signs(torch.float32))
        ]  # fmt: skip

    def dequantize(self) -> torch.Tensor:
        """The dense (out, in) weight in fp32."""
        return compose(self.path_list())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = None
        for i, (s_a, s_b) in enumerate(self.signs(x.dtype)):
            b, qv = self.env_b[i].to(x.dtype), self.env_qv[i].to(x.dtype)
            qu, a = self.env_qu[i].to(x.dtype), self.env_a[i].to(x.dtype)
            h = (x.unsqueeze(-2) * b.t()) @ s_b.t()  # (..., l, r)
            z = (h * qv.t()).sum(-2)  # (..., r)
            h = (z.unsqueeze(-2) * qu.t()) @ s_a.t()  # (..., l, p)
            part = (h * a.t()).sum(-2)
            y = part if y is None else y + part
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"envelopes={self.envelopes}, paths={self.paths}, bias={self.bias is not None}"
        )
