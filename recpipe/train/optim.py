"""AdamW whose embedding tables are updated lazily: a row steps only when it has a gradient.

Dense AdamW touches every row of every embedding table at every step (weights, both moments
and the gradient: about a dozen passes over each table), so a step costs in proportion to
users x dim however small the batch. Here parameters of ``nn.Embedding`` modules form a lazy
group: each step finds the rows with a non-zero gradient and updates those rows only, each
row with its own step count, so a row behaves as an independent AdamW that steps when its id
is in the batch (the first update of a row touched late is the same size as a fresh AdamW's).
Rows not in the batch keep their weights and moments exactly. Other parameters follow AdamW
(Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019) in full.

In a single process the embedding tables can also produce sparse gradients
(:func:`use_sparse_embedding_gradients`): the backward pass then hands over only the batch's
rows instead of allocating and zero-filling a table-sized gradient that the update scans for
its non-zero rows, so a step no longer costs in proportion to the table at all. Across
processes gradients stay dense, so DDP's and Horovod's all-reduce (any backend, NCCL
included, which reduces no sparse tensor) are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

LAZY = "lazy"


def embedding_parameters(model: nn.Module) -> list[torch.Tensor]:
    """The weights of the model's ``nn.Embedding`` modules (shared weights once)."""
    seen: set[int] = set()
    tables = []
    for module in model.modules():
        if isinstance(module, nn.Embedding) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            tables.append(module.weight)
    return tables


def parameter_groups(model: nn.Module, lazy_embeddings: bool) -> list[dict[str, Any]]:
    """Optimizer groups: embedding tables lazy (when asked), every other parameter dense."""
    lazy = embedding_parameters(model) if lazy_embeddings else []
    lazy_ids = {id(p) for p in lazy}
    dense = [p for p in model.parameters() if id(p) not in lazy_ids]
    groups: list[dict[str, Any]] = [{"params": dense, LAZY: False}]
    if lazy:
        groups.append({"params": lazy, LAZY: True})
    return groups


def use_sparse_embedding_gradients(model: nn.Module) -> int:
    """Make every ``nn.Embedding`` of ``model`` return sparse gradients; returns how many.

    Only for a single process whose embedding tables sit in a lazy group: the dense update
    and the multi-process all-reduce take dense gradients only.
    """
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    for table in tables:
        table.sparse = True
    return len(tables)


def clip_gradients(parameters: Iterable[torch.Tensor], max_norm: float) -> float:
    """Scale the gradients so that their joint L2 norm is at most ``max_norm``; returns the
    norm before scaling. :func:`torch.nn.utils.clip_grad_norm_`, for sparse gradients too
    (coalesced first, so that a row listed twice counts as the sum of its entries)."""
    grads = []
    for param in parameters:
        if param.grad is None:
            continue
        if param.grad.is_sparse:
            param.grad = param.grad.coalesce()
            grads.append(param.grad._values())
        else:
            grads.append(param.grad)
    if not grads:
        return 0.0
    norms = torch.stack([torch.linalg.vector_norm(g.detach(), 2.0) for g in grads])
    total = torch.linalg.vector_norm(norms, 2.0)
    # torch's formula and clamp, so both clip alike.
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.detach().mul_(scale.to(g.dtype))
    return float(total)


class RowLazyAdamW(torch.optim.Optimizer):
    """AdamW with decoupled weight decay; groups with ``lazy=True`` update only the rows
    (first dimension) whose gradient is non-zero, with per-row step counts.

    Every argument has a default: Horovod's ``DistributedOptimizer`` re-creates the optimizer
    from its parameter groups alone.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, LAZY: False}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter with a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse and not group[LAZY]:
                    raise RuntimeError("RowLazyAdamW takes sparse gradients in lazy groups only")
                if group[LAZY] and param.dim() >= 1:
                    self._lazy_update(param, group)
                else:
                    self._dense_update(param, group)
        return loss

    def _state(self, param: torch.Tensor, rows: bool) -> dict[str, Any]:
        state = self.state[param]
        if not state:
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            shape = (param.shape[0],) if rows else ()
            state["step"] = torch.zeros(shape, dtype=torch.float32, device=param.device)
        return state

    def _dense_update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        state = self._state(param, rows=False)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = float(state["step"])
        grad = param.grad
        assert grad is not None
        param.mul_(1 - group["lr"] * group["weight_decay"])
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # The order of operations of torch's AdamW, so that both round alike.
        correction1 = 1 - beta1**step
        correction2_sqrt = (1 - beta2**step) ** 0.5
        denom = (state["exp_avg_sq"].sqrt() / correction2_sqrt).add_(group["eps"])
        param.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / correction1)

    def _lazy_update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        state = self._state(param, rows=True)
        rows, g = _rows_with_gradient(param.grad)
        if rows.numel() == 0:
            return
        beta1, beta2 = group["betas"]
        steps = state["step"].index_add_(
            0, rows, torch.ones(len(rows), dtype=torch.float32, device=param.device)
        )[rows]
        weights = param.index_select(0, rows)
        exp_avg = state["exp_avg"].index_select(0, rows).lerp_(g, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2)
        exp_avg_sq.addcmul_(g, g, value=1 - beta2)
        shape = (-1,) + (1,) * (param.dim() - 1)
        # Corrections in float64, as torch computes them from a Python step count: in float32
        # 1 - 0.999**k loses about 1e-4 of itself for small k.
        steps = steps.double()
        step_size = (group["lr"] / (1 - beta1**steps)).view(shape).to(param.dtype)
        correction2_sqrt = ((1 - beta2**steps) ** 0.5).view(shape).to(param.dtype)
        weights.mul_(1 - group["lr"] * group["weight_decay"])
        denom = (exp_avg_sq.sqrt() / correction2_sqrt).add_(group["eps"])
        weights.sub_(exp_avg / denom * step_size)
        param.index_copy_(0, rows, weights)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)


def _rows_with_gradient(grad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(row indices, their gradient rows) of the rows whose gradient is not all zero.

    A sparse gradient lists its rows (a row twice when the batch holds its id twice: summed
    here); a row it lists with an all-zero gradient is dropped as the dense scan drops it.
    """
    assert grad is not None
    if grad.is_sparse:
        grad = grad.coalesce()
        rows, values = grad._indices()[0], grad._values()
        keep = values.reshape(values.shape[0], -1).ne(0).any(dim=1)
        if bool(keep.all()):
            return rows, values
        return rows[keep], values[keep]
    flat = grad.reshape(grad.shape[0], -1)
    rows = flat.ne(0).any(dim=1).nonzero().squeeze(1)
    return rows, grad.index_select(0, rows)
