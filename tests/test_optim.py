"""Row-lazy AdamW: dense groups equal torch's AdamW; lazy rows step only with a gradient."""

from __future__ import annotations

import copy

import torch
from torch import nn

from recpipe.train.optim import RowLazyAdamW, embedding_parameters, parameter_groups

LR, DECAY = 0.05, 0.1


def _start(*shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(1234))


def _grads(seed: int, shape: tuple[int, ...], rows: list[int] | None = None) -> torch.Tensor:
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if rows is not None:
        mask = torch.zeros(shape[0], dtype=torch.bool)
        mask[rows] = True
        grad[~mask] = 0.0
    return grad


def _run(optimizer: torch.optim.Optimizer, param: torch.Tensor, grads: list[torch.Tensor]) -> None:
    for grad in grads:
        optimizer.zero_grad()
        param.grad = grad.clone()
        optimizer.step()


def test_dense_group_equals_torch_adamw() -> None:
    start = _start(6, 3)
    ours, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    grads = [_grads(seed, (6, 3)) for seed in range(12)]
    _run(RowLazyAdamW([ours], lr=LR, weight_decay=DECAY), ours, grads)
    _run(torch.optim.AdamW([theirs], lr=LR, weight_decay=DECAY), theirs, grads)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_lazy_rows_with_gradients_every_step_equal_adamw() -> None:
    start = _start(5, 4)
    ours, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    grads = [_grads(seed, (5, 4)) for seed in range(10)]
    _run(RowLazyAdamW([{"params": [ours], "lazy": True}], lr=LR, weight_decay=DECAY), ours, grads)
    _run(torch.optim.AdamW([theirs], lr=LR, weight_decay=DECAY), theirs, grads)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_untouched_rows_keep_weights_and_moments_exactly() -> None:
    start = _start(8, 3)
    table = nn.Parameter(start.clone())
    optimizer = RowLazyAdamW([{"params": [table], "lazy": True}], lr=LR, weight_decay=DECAY)
    _run(optimizer, table, [_grads(seed, (8, 3), rows=[1, 4]) for seed in range(6)])
    idle = [0, 2, 3, 5, 6, 7]
    assert torch.equal(table.detach()[idle], start[idle])  # not even weight decay
    state = optimizer.state[table]
    assert torch.equal(state["exp_avg"][idle], torch.zeros(6, 3))
    assert state["step"].tolist() == [0, 6, 0, 0, 6, 0, 0, 0]
    assert not torch.equal(table.detach()[[1, 4]], start[[1, 4]])


def test_a_row_touched_late_takes_a_first_adam_step() -> None:
    """Per-row step counts: a row's first update is AdamW's first step, -lr * g / (|g| + eps)
    after decay, whenever it comes."""
    start = _start(4, 2)
    table = nn.Parameter(start.clone())
    optimizer = RowLazyAdamW([{"params": [table], "lazy": True}], lr=LR, weight_decay=DECAY)
    _run(optimizer, table, [_grads(seed, (4, 2), rows=[0]) for seed in range(5)])
    late = _grads(99, (4, 2), rows=[3])
    _run(optimizer, table, [late])
    expected = start[3] * (1 - LR * DECAY) - LR * late[3] / (late[3].abs() + 1e-8)
    torch.testing.assert_close(table.detach()[3], expected, rtol=1e-6, atol=1e-7)


def test_state_dict_resume_continues_identically() -> None:
    start = _start(6, 2)
    grads = [_grads(seed, (6, 2), rows=[seed % 6, (seed + 2) % 6]) for seed in range(8)]
    straight = nn.Parameter(start.clone())
    _run(RowLazyAdamW([{"params": [straight], "lazy": True}], lr=LR), straight, grads)
    resumed = nn.Parameter(start.clone())
    first = RowLazyAdamW([{"params": [resumed], "lazy": True}], lr=LR)
    _run(first, resumed, grads[:4])
    saved = copy.deepcopy(first.state_dict())
    second = RowLazyAdamW([{"params": [resumed], "lazy": True}], lr=LR)
    second.load_state_dict(saved)
    _run(second, resumed, grads[4:])
    assert torch.equal(resumed.detach(), straight.detach())


def test_parameter_groups_make_embedding_tables_lazy_once() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.items = nn.Embedding(10, 4, padding_idx=0)
            self.output = nn.Embedding(10, 4)
            self.output.weight = self.items.weight  # tied, as sequence models tie them
            self.users = nn.Embedding(5, 4)
            self.mlp = nn.Linear(4, 1)

    model = Model()
    assert [p.shape for p in embedding_parameters(model)] == [(10, 4), (5, 4)]
    dense, lazy = parameter_groups(model, lazy_embeddings=True)
    assert lazy["lazy"] and {id(p) for p in lazy["params"]} == {
        id(model.items.weight),
        id(model.users.weight),
    }
    assert {id(p) for p in dense["params"]} == {id(model.mlp.weight), id(model.mlp.bias)}
    (only,) = parameter_groups(model, lazy_embeddings=False)
    assert len(only["params"]) == 4 and not only["lazy"]
