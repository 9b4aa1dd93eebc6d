"""Loss helpers shared by the models: causal next-item targets, full and sampled softmax.

Every loss is computed in float32 whatever autocast produced, and every helper returns a
graph-connected zero when a batch has no valid position (rather than NaN from an empty mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_targets(history: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-item targets [B, L] and the mask [B, L] of positions that train.

    The target of position ``t`` is ``history[:, t + 1]``, and of the last position the batch's
    target item. With left padding the successor of a real item is always real, so a position
    trains exactly when its own item is real (and, defensively, its target is not padding).
    """
    targets = torch.cat([history[:, 1:], items[:, None]], dim=1)
    mask = (history != 0) & (targets != 0)
    return targets, mask


def log_q(item_counts: torch.Tensor) -> torch.Tensor:
    """log of each item's sampling probability [n_items + 1] from train interaction counts.

    q is the item's share of the counts of items 1..n (column 0, padding, is excluded). An item
    with no count is treated as seen once so its correction stays finite; all-zero counts (no
    statistics) give the uniform q, i.e. a constant shift that does not change the softmax.
    """
    counts = item_counts.float().clamp(min=1.0)
    counts[0] = 0.0
    return torch.log(counts / counts.sum()).clamp(min=torch.finfo(torch.float32).min)


def full_softmax_loss(
    hidden: torch.Tensor, item_table: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Cross entropy of ``hidden`` [N, d] against all items of ``item_table`` [n_items + 1, d].

    Column 0 is padding: it is left out of the softmax (targets shift down by one) so it can
    never absorb probability mass.
    """
    if targets.numel() == 0:
        return hidden.sum() * 0.0
    logits = (hidden @ item_table[1:].T).float()
    return F.cross_entropy(logits, targets - 1)


def sampled_softmax_loss(
    hidden: torch.Tensor,
    item_table: torch.Tensor,
    targets: torch.Tensor,
    item_log_q: torch.Tensor,
    temperature: float = 1.0,
    normalize: bool = False,
) -> torch.Tensor:
    """In-batch sampled softmax with log-Q correction (Yi et al., RecSys 2019).

    The candidates are the unique targets of the batch; each row's logits are
    ``hidden . item / temperature - log q(item)`` over them, and the label is the row's own
    target's index in the unique list. Deduplicating means an item that is the target of several
    rows appears once, so a row is never pushed away from a copy of its own positive.
    ``normalize`` L2-normalises the candidate vectors (only those, not the whole table); the
    caller normalises ``hidden`` itself.
    """
    if targets.numel() == 0:
        return hidden.sum() * 0.0
    candidates, labels = torch.unique(targets, return_inverse=True)
    cand = item_table[candidates]
    if normalize:
        cand = F.normalize(cand, dim=-1)
    logits = (hidden @ cand.T).float() / temperature
    logits = logits - item_log_q[candidates].float()
    return F.cross_entropy(logits, labels)


def bce_one_negative_loss(
    hidden: torch.Tensor, item_table: torch.Tensor, targets: torch.Tensor, n_items: int
) -> torch.Tensor:
    """Binary cross entropy of each target against one uniformly drawn negative item.

    Negatives are drawn from 1..n_items; one that collides with the row's target is moved to the
    next item (wrapping around), so padding and the positive itself are never negatives.
    """
    if targets.numel() == 0:
        return hidden.sum() * 0.0
    negatives = torch.randint(1, n_items + 1, targets.shape, device=targets.device)
    negatives = torch.where(negatives == targets, negatives % n_items + 1, negatives)
    pos = (hidden * item_table[targets]).sum(-1).float()
    neg = (hidden * item_table[negatives]).sum(-1).float()
    return -(F.logsigmoid(pos) + F.logsigmoid(-neg)).mean()


def next_item_loss(
    kind: str,
    hidden: torch.Tensor,
    item_table: torch.Tensor,
    targets: torch.Tensor,
    item_counts: torch.Tensor,
) -> torch.Tensor:
    """The next-item loss named ``kind`` of position vectors ``hidden`` [N, d] vs ``targets`` [N].

    ``full_softmax`` (all items), ``sampled_softmax`` (in-batch with log-Q from
    ``item_counts``) or ``bce`` (one uniform negative per position).
    """
    if kind == "full_softmax":
        return full_softmax_loss(hidden, item_table, targets)
    if kind == "sampled_softmax":
        return sampled_softmax_loss(hidden, item_table, targets, log_q(item_counts))
    if kind == "bce":
        return bce_one_negative_loss(hidden, item_table, targets, item_table.shape[0] - 1)
    raise ValueError(f"unknown loss '{kind}'")
