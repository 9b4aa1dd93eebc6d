"""DIN: deep interest network, attention over the behaviour history against the candidate.

Zhou, Zhu, Song, Fan, Zhu, Ma, Yan, Jin, Li, Gai, "Deep Interest Network for Click-Through
Rate Prediction", KDD 2018. An item is its id embedding plus its feature embeddings (the
paper's goods and category ids); the user profile is the sum of the user's feature fields.
"""

from __future__ import annotations

from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.data.batch import Batch, SampleKind
from recpipe.feature_specs import CONTEXT
from recpipe.model_settings import DinConfig
from recpipe.models.base import ModelConfig, ModelContext, RecModel, register
from recpipe.models.fields import FieldEncoder, layout_of
from recpipe.models.layers import relu_mlp


@register("din")
class Din(RecModel):
    """``logit = MLP([profile ; sum_j a(h_j, c) h_j ; c])``, ``a = MLP([h ; c ; h - c ; h * c])``.

    Paper: Zhou et al., KDD 2018: the attention weights are not normalised (no softmax), so
    the pooled interest keeps the intensity of the matching behaviours; ReLU stands in for
    PReLU/Dice. Trained with log loss against ``negatives`` uniform items per target. A
    sequence sample trains its own target and ``train_positions - 1`` earlier positions drawn
    at random (each with the items before it as history), since a window's last item alone is
    one example per ``max_len`` interactions. Scoring every item runs the attention per (user,
    candidate) pair, so it goes in chunks of ``score_chunk_pairs`` pairs: the
    candidate-dependent cost the paper's serving pays. An item never trained on has no id
    input: its features place it.
    """

    config_class: ClassVar[type[ModelConfig]] = DinConfig
    sample_kind: ClassVar[SampleKind] = "sequence"
    paper: ClassVar[str] = (
        "Zhou, Zhu, Song, Fan, Zhu, Ma, Yan, Jin, Li, Gai. Deep Interest Network for "
        "Click-Through Rate Prediction. KDD 2018."
    )

    item_counts: torch.Tensor  # buffer: train counts (0 marks an untrained item id)

    def __init__(self, config: DinConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: DinConfig = config
        d = config.dim
        layout, values = context.feature_layout, context.feature_values
        self.item_fields = FieldEncoder(
            "items", layout_of(layout, "items"), context.n_items + 1, d, values
        )
        self.user_fields = FieldEncoder(
            "users", layout_of(layout, "users"), context.n_users, d, values
        )
        # Event context joins the profile: a sample's target event's own in training, the
        # user's last train event's when scoring (a per-user table, like a user feature).
        self.context_fields = FieldEncoder(
            CONTEXT, layout_of(layout, CONTEXT), context.n_users, d, values
        )
        self.item_emb = nn.Embedding(context.n_items + 1, d, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=d**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        hidden, width = relu_mlp(4 * d, config.attention_layers, 0.0)
        self.attention = nn.Sequential(hidden, nn.Linear(width, 1))
        hidden, width = relu_mlp(3 * d, config.mlp_layers, config.dropout)
        self.top = nn.Sequential(hidden, nn.Linear(width, 1))
        self.register_buffer("item_counts", context.counts_tensor())

    @property
    def uses_user_ids(self) -> bool:
        """No user id: the history and the user's features."""
        return False

    @property
    def reads_context(self) -> bool:
        """With features.context declared: the target's context joins the profile."""
        return self.context_fields.count > 0

    @property
    def scores_untrained_items(self) -> bool:
        """With item features, an untrained item is placed by them."""
        return self.item_fields.count > 0

    @property
    def scores_untrained_users(self) -> bool:
        """Trained with emptied histories (``history_dropout``), a user without history is
        ranked from their profile features (every such user alike without them)."""
        return self.config.history_dropout > 0

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """[*items.shape, dim]: id embedding (trained items only) + feature embeddings."""
        ids = self.item_emb(items) * (self.item_counts[items] > 0)[..., None]
        fields = self.item_fields.fields(items)
        return ids + fields.sum(-2).to(ids.dtype) if self.item_fields.count else ids

    def _profile(
        self, users: torch.Tensor, dtype: torch.dtype, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, d]: the sum of the user's feature and event-context field embeddings."""
        profile = torch.zeros(*users.shape, self.config.dim, dtype=dtype, device=users.device)
        if self.user_fields.count:
            profile = profile + self.user_fields.fields(users).sum(-2).to(dtype)
        if self.context_fields.count:
            profile = profile + self.context_fields.fields(users, context).sum(-2).to(dtype)
        return profile

    def candidate_scores(
        self, history: torch.Tensor, profile: torch.Tensor, candidates: torch.Tensor
    ) -> torch.Tensor:
        """Logits [B, C] of candidate vectors [B or 1, C, d] for histories [B, L] (item ids,
        0 padding) with profiles [B, d]."""
        h = self.item_vectors(history)  # [B, L, d]
        weights = self._attention(h, candidates)  # [B, C, L]
        weights = weights * (history != 0)[:, None, :]  # padding takes no weight
        pooled = weights @ h  # [B, C, d]
        cand = candidates.expand(len(pooled), -1, -1)
        top = torch.cat([profile[:, None].expand_as(pooled), pooled, cand], -1)
        return self.top(top)[..., 0]

    def _attention(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The attention unit ``att([h ; c ; h - c ; h * c])`` [B, C, L] for history vectors
        [B, L, d] against candidates [B|1, C, d].

        Its first layer is linear, so it splits as ``(W_h + W_d) h + (W_c - W_d) c + W_p (h *
        c)``, and ``W_p (h * c) = h (c * W_p)^T``: no [B, C, L, 4d] input is built, only the
        first layer's [B, C, L, hidden] output (the unit reads the same weights either way).
        """
        hidden = cast(nn.Sequential, self.attention[0])
        out = self.attention[1]
        first = cast(nn.Linear, hidden[0])
        w_h, w_c, w_diff, w_prod = first.weight.split(self.config.dim, dim=1)  # [a, d] each
        by_history = (h @ (w_h + w_diff).T)[:, None]  # [B, 1, L, a]
        by_candidate = (c @ (w_c - w_diff).T + first.bias)[:, :, None]  # [B|1, C, 1, a]
        by_product = h[:, None] @ (c[..., None] * w_prod.T)  # [B, C, L, a]
        x = by_history + by_candidate + by_product
        for layer in list(hidden)[1:]:
            x = layer(x)
        return out(x)[..., 0]

    def training_rows(
        self, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(histories [N, L], targets [N], users [N], context [N, C] or None) that a batch
        trains: every sample's own row first, then for each sample up to ``train_positions -
        1`` distinct earlier positions ``t`` (target ``history[t]``, history the items before
        ``t``), drawn uniformly among those with at least one item before them.

        Only the sample's own target has its event's context; an earlier position reads its
        context as missing (zeros), never the later event's.
        """
        history, targets = batch.require("history"), batch.require("items")
        length = history.shape[1]
        extra = min(self.config.train_positions - 1, length - 1)
        if extra <= 0:
            return history, targets, batch.users, batch.context
        # Position t (1 <= t < L) is eligible when the item before it is real; with left
        # padding the item at t is then real too.
        eligible = history[:, :-1] != 0  # [B, L - 1], column j is t = j + 1
        keys = torch.rand(eligible.shape, device=history.device).masked_fill(~eligible, -1.0)
        drawn, columns = keys.topk(extra, dim=1)
        rows, picks = (drawn >= 0).nonzero(as_tuple=True)
        positions = columns[rows, picks] + 1  # [N'] values of t
        before = torch.arange(length, device=history.device)[None, :] < positions[:, None]
        histories = torch.cat([history, history[rows] * before])
        all_targets = torch.cat([targets, history[rows, positions]])
        users = torch.cat([batch.users, batch.users[rows]])
        context = batch.context
        if context is not None:
            context = torch.cat([context, torch.zeros_like(context[rows])])
        return histories, all_targets, users, context

    def loss(self, batch: Batch) -> torch.Tensor:
        """Log loss of each training row's target (1) against uniform negatives (0)."""
        history, targets, users, context = self.training_rows(batch)
        if self.training and self.config.history_dropout > 0:
            # An emptied history pools to zero, as for a user without one at scoring time.
            empty = torch.rand(len(history), device=history.device) < self.config.history_dropout
            history = history * ~empty[:, None]
        negatives = torch.randint(
            1, self.n_items + 1, (len(targets), self.config.negatives), device=targets.device
        )
        items = torch.cat([targets[:, None], negatives], 1)
        logits = self.candidate_scores(
            history,
            self._profile(users, self.item_emb.weight.dtype, context),
            self.item_vectors(items),
        ).float()
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        # A negative that happens to be the target is not a negative; nor is an item without
        # train interactions (as in export's samples): the model must not learn from the split
        # that a cold item is never chosen.
        real = negatives != targets[:, None]
        trained = self.item_counts > 0
        if bool(trained.any()):  # counts known (a bare context has none)
            real = real & trained[negatives]
        keep = torch.cat([torch.ones_like(targets[:, None]), real], 1)
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (loss * keep).sum() / keep.sum()

    def score_all(self, batch: Batch) -> torch.Tensor:
        """Logits of every item, [B, n_items + 1], ``score_chunk_pairs`` pairs at a time."""
        history = batch.require("history")
        profile = self._profile(batch.users, self.item_emb.weight.dtype)
        n_cols = self.n_items + 1
        items = self.item_vectors(torch.arange(n_cols, device=history.device))
        cols = min(n_cols, self.config.score_chunk_pairs)
        rows = max(1, self.config.score_chunk_pairs // cols)
        out = []
        for r0 in range(0, len(history), rows):
            block = [
                self.candidate_scores(
                    history[r0 : r0 + rows], profile[r0 : r0 + rows], items[None, c0 : c0 + cols]
                )
                for c0 in range(0, n_cols, cols)
            ]
            out.append(torch.cat(block, 1))
        return torch.cat(out, 0)
