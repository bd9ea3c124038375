"""Muon (Jordan et al. 2024, "Muon: MomentUm Orthogonalized by Newton-schulz") for the matrices of a
model's hidden layers, with AdamW for everything else, as one torch Optimizer.

Muon keeps SGD momentum (Nesterov) for each weight matrix and replaces its update by the nearest
semi-orthogonal matrix, U V^T of the update's SVD, computed approximately by five Newton-Schulz
iterations of a quintic polynomial whose coefficients (3.4445, -4.7750, 2.0315) were chosen for the
fastest rise of small singular values: the result is U S' V^T with S' in roughly [0.7, 1.2], which
trains as well as the exact U V^T (Jordan et al.). The update is scaled by sqrt(max(1, rows / cols))
so that tall and wide matrices take steps of the same RMS size. Embeddings, the output head, gains and
biases are not hidden-layer matrices and stay with AdamW (Jordan et al.; the NanoGPT speedrun).

A parameter group with `"muon": True` is updated by Muon; any other group by AdamW. The shared
loop's schedule sets each group's "lr", so both follow the same warmup and decay. A Muon group with
`"split": k` holds matrices that stack k matrices by rows (a fused q, k, v projection: k = 3); each
block is orthogonalised on its own, as the speedrun treats q, k and v. `ns_dtype` sets the
Newton-Schulz precision: None keeps float32 on CPU and bf16 on GPUs (the speedrun's choice);
torch.bfloat16 uses a CPU's bf16 units.
"""

from __future__ import annotations

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


@torch.no_grad()
def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The Newton-Schulz approximation of U V^T for a matrix g = U S V^T (rows x cols), computed in
    `dtype` (None: float32 on CPU, bf16 on GPUs)."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype if dtype is not None else torch.float32 if g.device.type == "cpu" else torch.bfloat16)
    transposed = x.size(0) > x.size(1)
    if transposed:  # iterate on the wide form: X X^T is the smaller Gram matrix
        x = x.T
    x = x / (x.norm() + eps)  # every singular value <= 1, where the iteration converges
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if transposed:
        x = x.T
    return x.to(g.dtype)


def muon_update(update: torch.Tensor, steps: int, split: int = 1, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Muon's step for one matrix: orthogonalised (each of `split` row blocks alone) and scaled by
    sqrt(max(1, rows / cols)) of the matrix orthogonalised, so tall and wide ones take steps of one RMS size."""
    blocks = update.chunk(split, dim=0) if split > 1 else (update,)
    return torch.cat([orthogonalize(b, steps, dtype=dtype) * max(1.0, b.size(0) / b.size(1)) ** 0.5 for b in blocks], dim=0)


class MuonAdamW(torch.optim.Optimizer):
    def __init__(self, groups, lr: float = 1e-3, betas=(0.9, 0.99), eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.95, ns_steps: int = 5, ns_dtype: torch.dtype | None = None):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum, ns_steps=ns_steps, muon=False,
                        split=1)
        self.ns_dtype = ns_dtype  # not a group option: a resume may change it
        super().__init__(groups, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon updates matrices only; give other parameters to an AdamW group.")
            if group["muon"] and any(p.size(0) % group["split"] for p in group["params"]):
                raise ValueError(f"a Muon group split in {group['split']} needs matrices whose rows divide by {group['split']}.")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["muon"]:
                self._muon(group)
            else:
                self._adamw(group)
        return loss

    def _muon(self, group) -> None:
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.mul_(momentum).add_(p.grad)
            update = p.grad.add(buf, alpha=momentum)  # Nesterov
            update = muon_update(update, group["ns_steps"], group.get("split", 1), self.ns_dtype)  # no split in older checkpoints
            if decay:
                p.mul_(1 - lr * decay)
            p.add_(update, alpha=-lr)

    def _adamw(self, group) -> None:
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = float(state["step"])
            if decay:
                p.mul_(1 - lr * decay)
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denominator = (state["exp_avg_sq"] / (1 - beta2 ** t)).sqrt_().add_(eps)
            p.addcdiv_(state["exp_avg"], denominator, value=-lr / (1 - beta1 ** t))
