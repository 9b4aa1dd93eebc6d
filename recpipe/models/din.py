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
        return self._score_prepared(history, profile, self._prepare(candidates))

    def _prepare(self, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What depends on the candidates [B|1, C, d] alone, computed once however many users
        score them: each candidate's attention map and its share of the top MLP's first layer.

        The attention unit's first layer is linear, so for a fixed candidate ``c`` it is an
        affine map of the history vector ``h``: ``W [h; c; h - c; h * c] + b = (W_h + W_d +
        W_p diag(c)) h + (W_c - W_d) c + b``, a [d + 1, a] matrix (slope, then offset).
        Returns the maps side by side [B|1, d + 1, C * a] and the top term [B|1, C, m].
        """
        attention_in = cast(nn.Linear, cast(nn.Sequential, self.attention[0])[0])
        w_h, w_c, w_diff, w_prod = attention_in.weight.split(self.config.dim, dim=1)
        slope = (w_h + w_diff).T + candidates[..., None] * w_prod.T  # [B|1, C, d, a]
        offset = candidates @ (w_c - w_diff).T + attention_in.bias  # [B|1, C, a]
        maps = torch.cat([slope, offset[..., None, :]], -2)  # [B|1, C, d + 1, a]
        n, n_cand, rows, width = maps.shape
        maps = maps.permute(0, 2, 1, 3).reshape(n, rows, n_cand * width)
        top_in = cast(nn.Linear, cast(nn.Sequential, self.top[0])[0])
        w_candidate = top_in.weight.split(self.config.dim, dim=1)[2]
        return maps, candidates @ w_candidate.T + top_in.bias

    def _score_prepared(
        self,
        history: torch.Tensor,
        profile: torch.Tensor,
        prepared: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """``candidate_scores`` from ``_prepare``'s output.

        The top MLP's first layer is linear over ``[profile ; pooled ; candidate]``, so each
        part goes through it where it varies (per user, per pair, per candidate) and the parts
        are summed: no [B, C, 3d] concatenation.
        """
        maps, candidate_term = prepared
        h = self.item_vectors(history)  # [B, L, d]
        weights = self._attention(h, maps, candidate_term.shape[-2])  # [B, C, L]
        weights = weights * (history != 0)[:, None, :]  # padding takes no weight
        pooled = weights @ h  # [B, C, d]
        top = cast(nn.Sequential, self.top[0])
        w_profile, w_pooled, _ = cast(nn.Linear, top[0]).weight.split(self.config.dim, dim=1)
        x = pooled @ w_pooled.T + (profile @ w_profile.T)[:, None] + candidate_term
        for layer in list(top)[1:]:
            x = layer(x)
        return self.top[1](x)[..., 0]

    def _attention(self, h: torch.Tensor, maps: torch.Tensor, n_cand: int) -> torch.Tensor:
        """The attention unit ``att([h ; c ; h - c ; h * c])`` [B, C, L] for history vectors
        [B, L, d] against the candidates whose maps ``_prepare`` built: one matrix product of
        the histories (with a 1 appended) by every map gives the first layer's [B, L, C, a]
        output, with no [B, C, L, 4d] input and no per-pair sums."""
        batch, length = h.shape[:2]
        h1 = torch.cat([h, torch.ones_like(h[..., :1])], -1)  # [B, L, d + 1]
        # The same candidates for every row (scoring) take one matrix product for all rows.
        shared = len(maps) == 1
        x = h1.reshape(batch * length, -1) @ maps[0] if shared else torch.bmm(h1, maps)
        x = x.view(batch, length, n_cand, -1)
        for layer in list(cast(nn.Sequential, self.attention[0]))[1:]:
            # In place: x is by far the largest tensor here, and a fresh one per layer costs
            # more (page faults) than the ReLU; a linear layer's output is free to overwrite.
            x = x.relu_() if isinstance(layer, nn.ReLU) else layer(x)
        return self.attention[1](x)[..., 0].transpose(1, 2)

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
        out = items.new_empty(len(history), n_cols)
        for c0 in range(0, n_cols, cols):
            # A column block's maps serve every row block: prepared once, held one at a time.
            prepared = self._prepare(items[None, c0 : c0 + cols])
            for r0 in range(0, len(history), rows):
                out[r0 : r0 + rows, c0 : c0 + cols] = self._score_prepared(
                    history[r0 : r0 + rows], profile[r0 : r0 + rows], prepared
                )
        return out
