"""The gradient-leak audit: how much of a network's `.grad` came from the other network's loss.

Every parameter of both networks carries a tensor hook, which autograd calls with the
gradient a backward pass is about to add into `.grad`. The step engine says whose loss each
backward belongs to (`owner`); a gradient arriving at a network that is not the owner is
foreign, and the audit keeps a running sum of it per parameter until that network's
`.grad` is zeroed. At the optimizer step

    leak = ||foreign|| / ||.grad - foreign||

which is exactly 0.0 when no foreign gradient arrived (nothing is computed then), and above
0 whenever one did. The hooks cost one Python call per parameter per backward pass.

In a distributed job each rank sees its own micro-batches' foreign gradient while `.grad`
holds the ranks' average by the step; `average` (an in-place all-reduce mean) makes the
foreign part the ranks' average too, so every rank reports what one rank would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial

import torch


class LeakAudit:
    def __init__(
        self,
        networks: dict[str, list[torch.nn.Parameter]],
        average: Callable[[list[torch.Tensor]], None] | None = None,
    ):
        self._params = networks
        self._average = average
        self._foreign: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {
            name: {} for name in networks
        }
        self._owner: str | None = None
        self._handles = [
            p.register_hook(partial(self._on_grad, name, p))
            for name, params in networks.items()
            for p in params
        ]

    def _on_grad(self, network: str, param: torch.Tensor, grad: torch.Tensor) -> None:
        if self._owner == network:
            return
        # A write from another network's loss (or from a backward nobody claimed).
        buf = self._foreign[network]
        key = id(param)
        if key in buf:
            buf[key][1].add_(grad.detach())
        else:
            buf[key] = (param, grad.detach().clone())

    @contextmanager
    def backward_of(self, owner: str) -> Iterator[None]:
        """Attribute the gradients of backward passes in this block to `owner`'s loss."""
        previous, self._owner = self._owner, owner
        try:
            yield
        finally:
            self._owner = previous

    def reset(self, network: str) -> None:
        """The network's `.grad` was zeroed: whatever foreign gradient it held is gone."""
        self._foreign[network].clear()

    def leak(self, network: str) -> float:
        """||foreign|| / ||own|| of the network's current `.grad` (0.0 when nothing leaked)."""
        buf = self._foreign[network]
        if not buf:
            return 0.0
        params = self._params[network]
        foreign = {key: f.to(torch.float64, copy=True) for key, (_, f) in buf.items()}
        if self._average is not None:
            # Every rank's buffer is filled by the same schedule: all take part, or none.
            full = [foreign.get(id(p), torch.zeros_like(p, dtype=torch.float64)) for p in params]
            self._average(full)
            foreign = {id(p): f for p, f in zip(params, full, strict=True)}
        foreign_sq = sum(float(f.pow(2).sum()) for f in foreign.values())
        own_sq = 0.0
        for p in params:
            if p.grad is None:
                continue
            own = p.grad.double()
            if id(p) in foreign:
                own = own - foreign[id(p)]
            own_sq += float(own.pow(2).sum())
        if foreign_sq == 0.0:
            return 0.0
        # A step on purely foreign gradient: report the foreign norm itself (the ratio is inf).
        return (foreign_sq / own_sq) ** 0.5 if own_sq > 0 else foreign_sq**0.5

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def total_norm(params: Iterable[torch.nn.Parameter]) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
