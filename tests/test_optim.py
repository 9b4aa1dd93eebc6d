"""Row-lazy AdamW: dense groups equal torch's AdamW; lazy rows step only with a gradient."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from recpipe.train.optim import (
    RowLazyAdamW,
    clip_gradients,
    embedding_parameters,
    parameter_groups,
    use_sparse_embedding_gradients,
)

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


class _Tied(nn.Module):
    """Sequence-model shape: item table (with padding) tied to a full-softmax output, a user
    table, a dense layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.items = nn.Embedding(12, 4, padding_idx=0)
        self.users = nn.Embedding(9, 4)
        self.mix = nn.Linear(4, 4)

    def forward(self, users: torch.Tensor, history: torch.Tensor, target: torch.Tensor):
        state = self.mix(self.users(users) + self.items(history).sum(1))
        logits = state @ self.items.weight.T  # dense use of the same table
        return nn.functional.cross_entropy(logits, target)


def _train(model: _Tied, clip: float, steps: int = 8) -> RowLazyAdamW:
    optimizer = RowLazyAdamW(
        parameter_groups(model, lazy_embeddings=True), lr=LR, weight_decay=DECAY
    )
    generator = torch.Generator().manual_seed(3)
    for _ in range(steps):
        users = torch.randint(0, 4, (6,), generator=generator)  # repeats, rows 4-8 never
        history = torch.randint(0, 12, (6, 3), generator=generator)  # padding 0 included
        target = torch.randint(1, 12, (6,), generator=generator)
        optimizer.zero_grad()
        model(users, history, target).backward()
        clip_gradients(model.parameters(), clip)
        optimizer.step()
    return optimizer


def test_sparse_embedding_gradients_train_exactly_like_dense_ones() -> None:
    """The sparse path (single process) against the dense one, which the tests above hold to
    torch's AdamW: same weights and moments after clipped steps with repeated ids, a padding
    row and a table also used densely (its gradient then arrives dense)."""
    dense_model, sparse_model = _Tied(), _Tied()
    sparse_model.load_state_dict(dense_model.state_dict())
    assert use_sparse_embedding_gradients(sparse_model) == 2
    dense_opt = _train(dense_model, clip=0.5)
    sparse_opt = _train(sparse_model, clip=0.5)
    for name, want in dense_model.state_dict().items():
        torch.testing.assert_close(sparse_model.state_dict()[name], want, rtol=1e-5, atol=1e-6)
    users = sparse_model.users.weight
    assert (
        sparse_opt.state[users]["step"].tolist()
        == dense_opt.state[dense_model.users.weight]["step"].tolist()
    )
    assert sparse_opt.state[users]["step"][4:].eq(0).all()  # never in a batch: never stepped
    # The feature was on: the user table's gradient is sparse and lists the batch's rows only.
    sparse_model.zero_grad()
    sparse_model(
        torch.tensor([1, 1, 2]), torch.tensor([[0, 3, 3]] * 3), torch.tensor([1, 2, 3])
    ).backward()
    grad = users.grad
    assert grad is not None and grad.is_sparse
    assert sorted(set(grad.coalesce().indices()[0].tolist())) == [1, 2]


def test_clip_gradients_matches_torch_for_dense_and_sparse_gradients() -> None:
    table, layer = nn.Parameter(_start(6, 3)), nn.Parameter(_start(2, 2))
    indices = torch.tensor([[1, 4, 1]])  # row 1 twice: its entries sum
    values = _grads(5, (3, 3))
    dense_table, dense_layer = (
        nn.Parameter(table.detach().clone()),
        nn.Parameter(layer.detach().clone()),
    )
    dense_table.grad = torch.sparse_coo_tensor(indices, values, (6, 3)).to_dense()
    dense_layer.grad = _grads(6, (2, 2))
    table.grad = torch.sparse_coo_tensor(indices, values, (6, 3))
    layer.grad = dense_layer.grad.clone()
    want = torch.nn.utils.clip_grad_norm_([dense_table, dense_layer], 0.3)
    got = clip_gradients([table, layer], 0.3)
    assert got == pytest.approx(float(want), rel=1e-6) and got > 0.3  # it did clip
    torch.testing.assert_close(table.grad.to_dense(), dense_table.grad)
    torch.testing.assert_close(layer.grad, dense_layer.grad)
