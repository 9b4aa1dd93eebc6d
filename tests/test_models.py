"""Deep models on tiny random data with real torch: contract, numerics and hand-computed losses."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from pydantic import ValidationError

from recpipe.data.batch import SAMPLE_KINDS, Batch, SampleKind
from recpipe.models import ModelContext, RecModel, model_class, registry
from recpipe.models.bpr_mf import BprMf, BprMfConfig
from recpipe.models.cke import Cke, CkeConfig
from recpipe.models.losses import causal_targets, full_softmax_loss, log_q, sampled_softmax_loss
from recpipe.models.mmoe import Mmoe, MmoeConfig
from recpipe.models.sasrec import SasRec
from recpipe.train.optim import use_sparse_embedding_gradients

CONF_MODELS = Path(__file__).resolve().parent.parent / "conf" / "models"
N_USERS, N_ITEMS, MAX_LEN = 30, 40, 12
COUNTS = np.concatenate([[0], np.arange(1, N_ITEMS + 1) % 7 + 1]).astype(np.int64)
# Item and user features as the features stage would give them (every model gets them; the
# feature-aware ones read them): a list feature, a categorical, a float, a user categorical.
FEATURE_LAYOUT = {
    "items": [
        {"name": "genres", "kind": "multi", "width": 3, "size": 6},
        {"name": "brand", "kind": "categorical", "width": 1, "size": 5},
        {"name": "price", "kind": "numeric", "width": 1, "size": None},
    ],
    "users": [{"name": "region", "kind": "categorical", "width": 1, "size": 4}],
    # A knowledge graph as recpipe.knowledge gives it (models.cke reads it): 9 entity rows
    # (8 entities), 4 relation rows (3 relations).
    "kg": [
        {"name": "item_entity", "kind": "entity", "width": 1, "size": 9},
        {"name": "triples", "kind": "triples", "width": 3, "size": 4},
    ],
}
_features = torch.Generator().manual_seed(7)
FEATURE_VALUES = {
    "items.genres": torch.randint(0, 6, (N_ITEMS + 1, 3), generator=_features),
    "items.brand": torch.randint(0, 5, (N_ITEMS + 1, 1), generator=_features),
    "items.price": torch.randn(N_ITEMS + 1, generator=_features),
    "users.region": torch.randint(0, 4, (N_USERS, 1), generator=_features),
    "kg.item_entity": torch.randint(0, 9, (N_ITEMS + 1,), generator=_features),
    "kg.triples": torch.stack(
        [
            torch.randint(1, 9, (20,), generator=_features),
            torch.randint(1, 4, (20,), generator=_features),
            torch.randint(1, 9, (20,), generator=_features),
        ],
        dim=1,
    ),
}
CONTEXT = ModelContext(
    n_users=N_USERS,
    n_items=N_ITEMS,
    max_len=MAX_LEN,
    item_counts=COUNTS,
    feature_layout=FEATURE_LAYOUT,
    feature_values=FEATURE_VALUES,
)
SEQUENCE_MODELS = [name for name, cls in registry().items() if cls.sample_kind == "sequence"]

# Small architectures (and no dropout) keep every test fast and the overfit test deterministic.
TINY: dict[str, dict[str, Any]] = {
    "bpr_mf": {"dim": 16},
    "cke": {"dim": 8, "relation_dim": 6, "kg_batch_size": 16},
    "neumf": {"dim": 16, "mf_dim": 8, "mlp_layers": [32, 16], "dropout": 0.0},
    "two_tower": {"dim": 16, "tower_layers": [32], "dropout": 0.0},
    "hybrid_two_tower": {
        "dim": 16,
        "item_layers": [32],
        "user_layers": [32],
        "dropout": 0.0,
        "id_dropout": 0.0,
        "history_dropout": 0.0,
    },
    "deepfm": {"dim": 8, "mlp_layers": [16, 8], "dropout": 0.0, "score_chunk_pairs": 50},
    "nfm": {"dim": 8, "mlp_layers": [16], "dropout": 0.0, "score_chunk_pairs": 50},
    "mmoe": {
        "dim": 8,
        "experts": 3,
        "expert_layers": [12, 10],
        "tower_layers": [6],
        "dropout": 0.0,
        "score_chunk_pairs": 50,
    },
    "din": {
        "dim": 8,
        "attention_layers": [12],
        "mlp_layers": [16],
        "dropout": 0.0,
        "history_dropout": 0.0,
        "negatives": 3,
        "score_chunk_pairs": 60,
    },
    "wide_deep": {
        "dim": 8,
        "mlp_layers": [16, 8],
        "dropout": 0.0,
        "cross_buckets": 97,
        "score_chunk_pairs": 50,
    },
    "gru4rec": {"dim": 16, "hidden_size": 24, "dropout": 0.0},
    "sasrec": {"dim": 16, "num_heads": 2, "dropout": 0.0},
    "narm": {"dim": 16, "hidden_size": 24, "emb_dropout": 0.0, "ct_dropout": 0.0},
    "stamp": {"dim": 16, "dropout": 0.0},
    "svdpp": {"dim": 16},
    # anneal_steps=0: a fixed KL weight, so two loss calls of one batch are comparable.
    "mult_vae": {"dim": 8, "hidden_layers": [24], "input_dropout": 0.0, "anneal_steps": 0},
    "cdae": {"dim": 16, "corruption": 0.0, "negatives": 8},
    "recvae": {"dim": 8, "hidden": 24, "encoder_layers": 3, "input_dropout": 0.0},
    "irgan": {"dim": 16, "samples": 4},
    "rum": {"dim": 16, "memory_size": 3, "negatives": 4, "score_item_chunk": 7},
}
# Each registered model with its tiny defaults, plus the non-default branches worth covering.
VARIANTS: list[tuple[str, dict[str, Any]]] = [(name, {}) for name in sorted(registry())] + [
    ("neumf", {"mode": "gmf"}),
    ("neumf", {"mode": "mlp"}),
    ("two_tower", {"use_user_id": True, "share_embeddings": False, "normalize": False}),
    ("hybrid_two_tower", {"use_item_ids": False, "normalize": False}),
    ("cke", {"relation_dim": 8}),  # TransR's projections start at the identity
    ("nfm", {"mlp_layers": []}),
    (
        "mmoe",
        {"rank_by": "expected_rating", "expert_layers": [12], "tower_layers": []},
    ),  # NFM-0: the bi-interaction straight into the output
    ("gru4rec", {"loss": "sampled_softmax", "num_layers": 2}),
    ("sasrec", {"loss": "sampled_softmax"}),
    ("sasrec", {"loss": "bce", "num_blocks": 1}),
    ("narm", {"loss": "sampled_softmax"}),
    ("svdpp", {"loss": "sampled_softmax"}),
    ("mult_vae", {"hidden_layers": [32, 24], "input_dropout": 0.5}),
    ("cdae", {"hidden_activation": "tanh", "corruption": 0.3}),
    ("recvae", {"encoder_layers": 1, "input_dropout": 0.5, "prior_refresh_steps": 1}),
]
# Models whose score is a network per (user, item) pair, with no item vectors to export.
NOT_DOT_PRODUCTS = ("neumf", "rum", "deepfm", "nfm", "wide_deep", "din", "mmoe")
# The autoencoders learn a whole bag per row through a bottleneck, and IRGAN's generator
# learns only through the discriminator's reward: they need more steps.
OVERFIT_STEPS = {"cdae": 150, "mult_vae": 150, "recvae": 150, "irgan": 150}
VARIANT_IDS = [name + "".join(f"-{k}={v}" for k, v in extra.items()) for name, extra in VARIANTS]


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """One intra-op thread: the tensors are tiny, and spinning threads slow a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, context: ModelContext = CONTEXT, seed: int = 0, **extra: Any) -> RecModel:
    """The registered model ``name`` with its tiny config (plus ``extra``), seeded."""
    cls = model_class(name)
    torch.manual_seed(seed)
    return cls(cls.config_class(**{**TINY.get(name, {}), **extra}), context)


def left_pad(rows: list[list[int]], length: int) -> torch.Tensor:
    """Left-pad item lists with 0 to ``length`` columns."""
    return torch.tensor([[0] * (length - len(r)) + r for r in rows], dtype=torch.int64)


def make_batch(kind: SampleKind, rows: int = 9, length: int = 8, seed: int = 0) -> Batch:
    """A valid batch of ``kind``: items in 1..N_ITEMS, users in 1..N_USERS-1.

    Sequence rows have lengths ``length, length-1, ..., 1`` and then an empty history, so both
    full rows and heavy left padding (and the no-history edge case) are exercised.
    """
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(1, N_USERS, (rows,), generator=g)
    items = torch.randint(1, N_ITEMS + 1, (rows,), generator=g)
    if kind == "pairwise":
        negatives = torch.randint(1, N_ITEMS + 1, (rows, 3), generator=g)
        return Batch(users=users, items=items, negatives=negatives)
    if kind == "pointwise":
        labels = (torch.arange(rows) % 2 == 0).float()
        # A rating on positives (one left without), NaN on sampled rows, as export writes them.
        stars = torch.randint(1, 6, (rows,), generator=g).float()
        values = torch.where(labels > 0, stars, torch.nan)
        values[0] = torch.nan
        return Batch(users=users, items=items, labels=labels, values=values)
    lengths = [max(length - i, 0) for i in range(rows - 1)] + [0]
    seqs = [torch.randint(1, N_ITEMS + 1, (n,), generator=g).tolist() for n in lengths]
    history = left_pad(seqs, length)
    ts = left_pad([list(range(1_000, 1_000 + n)) for n in lengths], length)
    return Batch(users=users, items=items, history=history, history_ts=ts)


def seeded_loss(model: RecModel, batch: Batch) -> torch.Tensor:
    """Loss with a fixed RNG state, so losses that sample (bce) are comparable across calls."""
    torch.manual_seed(123)
    return model.loss(batch)


def test_every_model_has_a_variant_and_sample_kind() -> None:
    assert set(TINY) == set(registry())
    for name, cls in registry().items():
        assert cls.sample_kind in SAMPLE_KINDS
        assert cls.paper and cls.__doc__
        first_author = cls.paper.split(",")[0].split()[0].rstrip(".")
        assert first_author in cls.__doc__, name


@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=VARIANT_IDS)
def test_loss_is_finite_scalar_with_gradients_everywhere(name: str, extra: dict[str, Any]) -> None:
    model = build(name, **extra)
    batch = make_batch(model.sample_kind)
    model.train()
    loss = seeded_loss(model, batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    torch.manual_seed(123)
    assert torch.equal(model(batch), loss)  # forward is the loss (for DDP)
    loss.backward()
    for pname, param in model.named_parameters():
        if not param.requires_grad:  # frozen by design (RecVAE's prior copy of its encoder)
            assert param.grad is None, pname
            continue
        assert param.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, f"{pname} got a zero gradient"
    model.eval()
    with torch.no_grad():
        scores = model.score_all(batch)
    assert scores.shape == (len(batch), N_ITEMS + 1)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name", sorted(registry()))
def test_sparse_embedding_gradients_equal_dense_ones(name: str) -> None:
    """Every model with its tables switched to sparse gradients (single-process training)
    gets the same gradients as with dense ones, and a table read only by lookups (an
    autoencoder's input table included) gets them sparse: only the batch's rows."""
    dense, sparse = build(name), build(name)
    assert use_sparse_embedding_gradients(sparse) > 0
    batch = make_batch(dense.sample_kind)
    for model in (dense, sparse):
        model.train()
        seeded_loss(model, batch).backward()
    sparse_params = dict(sparse.named_parameters())
    for pname, param in dense.named_parameters():
        got = sparse_params[pname].grad
        if param.grad is None:
            assert got is None, pname
            continue
        assert got is not None, pname
        torch.testing.assert_close(
            got.to_dense() if got.is_sparse else got, param.grad, rtol=1e-5, atol=1e-6
        )
    bag_tables = {"mult_vae": "item_in", "cdae": "item_in", "recvae": "encoder.item_in"}
    if name in bag_tables:
        grad = sparse.get_submodule(bag_tables[name]).weight.grad
        assert grad is not None and grad.is_sparse
        rows = set(grad.coalesce().indices()[0].tolist())
        assert rows <= set(batch.require("history").unique().tolist())


@pytest.mark.parametrize("name", sorted(registry()))
def test_every_model_trains_and_scores_without_features(name: str) -> None:
    """A data set without a catalogue: the feature-aware models fall back to ids alone."""
    bare = ModelContext(n_users=N_USERS, n_items=N_ITEMS, max_len=MAX_LEN, item_counts=COUNTS)
    model = build(name, context=bare)
    batch = make_batch(model.sample_kind)
    loss = seeded_loss(model, batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    model.eval()
    with torch.no_grad():
        scores = model.score_all(batch)
    assert scores.shape == (len(batch), N_ITEMS + 1) and torch.isfinite(scores).all()
    assert not model.scores_untrained_items


@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=VARIANT_IDS)
def test_overfits_a_fixed_tiny_batch(name: str, extra: dict[str, Any]) -> None:
    model = build(name, **extra)
    batch = make_batch(model.sample_kind)
    measure = FIT_MEASURES.get(name, seeded_loss)
    model.eval()
    with torch.no_grad():
        before = measure(model, batch).item()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(OVERFIT_STEPS.get(name, 60)):
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = measure(model, batch).item()
    floor = bag_entropy(batch) if name in ("mult_vae", "recvae") else 0.0
    assert after - floor < 0.5 * (before - floor), (before, after, floor)


def generator_nll(model: RecModel, batch: Batch) -> torch.Tensor:
    """IRGAN: the generator's mean -log p(true item | user) (a minimax loss need not fall)."""
    log_p = model.generator_log_probs(batch.users)  # type: ignore[operator]
    return -log_p.gather(1, batch.require("items")[:, None] - 1).mean()


# What fitting a tiny batch must halve, where it is not the model's loss.
FIT_MEASURES = {"irgan": generator_nll}


def bag_entropy(batch: Batch) -> float:
    """The least multinomial loss of reconstructing each row's bag (history and target), summed
    over the bag's items: the mean over rows of the bag's size times the entropy of its item
    shares, reached when the model predicts the shares."""
    entropies = []
    for row in torch.cat([batch.require("history"), batch.require("items")[:, None]], 1):
        _, counts = torch.unique(row[row != 0], return_counts=True)
        share = counts.double() / counts.sum()
        entropies.append(float(-(counts * share.log()).sum()))
    return float(np.mean(entropies))


@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=VARIANT_IDS)
def test_bf16_autocast_gives_finite_loss_gradients_and_scores(
    name: str, extra: dict[str, Any]
) -> None:
    model = build(name, **extra)
    batch = make_batch(model.sample_kind)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = seeded_loss(model, batch)
        model.eval()
        with torch.no_grad():
            scores = model.score_all(batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert scores.shape == (len(batch), N_ITEMS + 1)
    assert torch.isfinite(scores.float()).all()


@pytest.mark.parametrize("name", sorted(registry()))
def test_yaml_equals_config_defaults(name: str) -> None:
    data = yaml.safe_load((CONF_MODELS / f"{name}.yaml").read_text())
    assert data == {"models": {name: model_class(name).config_class().model_dump(mode="json")}}


def test_yaml_files_and_registry_match() -> None:
    assert {p.stem for p in CONF_MODELS.glob("*.yaml")} == set(registry())


@pytest.mark.parametrize("name", sorted(registry()))
def test_config_rejects_unknown_keys(name: str) -> None:
    config_class = model_class(name).config_class
    with pytest.raises(ValidationError):
        config_class(no_such_setting=1)
    with pytest.raises(ValidationError):
        config_class(dim=0)


def test_sasrec_config_needs_heads_dividing_dim() -> None:
    with pytest.raises(ValidationError):
        SasRec.config_class(dim=10, num_heads=3)


@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=VARIANT_IDS)
def test_score_all_is_user_times_item_embeddings(name: str, extra: dict[str, Any]) -> None:
    model = build(name, **extra).eval()
    batch = make_batch(model.sample_kind)
    with torch.no_grad():
        items, users = model.item_embeddings(), model.user_embeddings(batch)
        scores = model.score_all(batch)
    if name in NOT_DOT_PRODUCTS:
        assert items is None and users is None
        return
    assert items is not None and users is not None
    assert items.shape[0] == N_ITEMS + 1 and users.shape == (len(batch), items.shape[1])
    torch.testing.assert_close(scores, users @ items.T)


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_sequence_scores_do_not_depend_on_left_padding(name: str) -> None:
    model = build(name).eval()
    batch = make_batch("sequence", length=8)
    history = batch.require("history")
    wider = torch.cat([torch.zeros(len(batch), 4, dtype=torch.int64), history], dim=1)
    with torch.no_grad():
        short = model.score_all(batch)
        long = model.score_all(Batch(users=batch.users, history=wider))
    torch.testing.assert_close(short, long, rtol=1e-5, atol=1e-5)
    # The check has teeth: a different history gives different scores.
    changed = history.clone()
    changed[0, -1] = changed[0, -1] % N_ITEMS + 1
    with torch.no_grad():
        other = model.score_all(Batch(users=batch.users, history=changed))
    assert not torch.allclose(other[0], short[0])


def test_sasrec_is_causal() -> None:
    model = build("sasrec").eval()
    history = make_batch("sequence", rows=3, length=8).require("history")[:2]  # lengths 8 and 7
    with torch.no_grad():
        out = model.sequence_output(history)
        earlier = history.clone()
        earlier[:, 3] = earlier[:, 3] % N_ITEMS + 1
        out_earlier = model.sequence_output(earlier)
        last = history.clone()
        last[:, -1] = last[:, -1] % N_ITEMS + 1
        out_last = model.sequence_output(last)
    assert out.shape == (2, 8, model.config.dim)
    # An earlier item reaches the last position, but not the positions before it.
    assert not torch.allclose(out_earlier[:, -1], out[:, -1])
    torch.testing.assert_close(out_earlier[:, :3], out[:, :3])
    # The last item reaches only the last position.
    torch.testing.assert_close(out_last[:, :-1], out[:, :-1])
    assert not torch.allclose(out_last[:, -1], out[:, -1])
    # Padding positions output zeros (row 1 has one padding column).
    assert torch.all(out[1, 0] == 0)


def test_causal_targets_shift_and_mask() -> None:
    history = left_pad([[5, 6, 7], [8]], 4)
    targets, mask = causal_targets(history, torch.tensor([9, 3]))
    assert targets.tolist() == [[5, 6, 7, 9], [0, 0, 8, 3]]
    assert mask.tolist() == [[False, True, True, True], [False, False, False, True]]


def test_bpr_loss_matches_hand_computation() -> None:
    model = BprMf(BprMfConfig(dim=2, reg=0.1), ModelContext(n_users=3, n_items=3))
    with torch.no_grad():
        model.user_emb.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.5, -1.0]]))
        model.item_emb.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]]))
        model.item_bias.weight.copy_(torch.tensor([[0.0], [0.1], [-0.2], [0.3]]))
    # The second row has one padding negative (0), which must be ignored.
    batch = Batch(
        users=torch.tensor([1, 2]),
        items=torch.tensor([1, 2]),
        negatives=torch.tensor([[2, 3], [3, 0]]),
    )
    # Row 1: s(1) = 1 + 0.1 = 1.1, s(2) = 2 - 0.2 = 1.8, s(3) = -1 + 2 + 0.3 = 1.3.
    # Row 2: s(2) = -1 - 0.2 = -1.2, s(3) = -0.5 - 1 + 0.3 = -1.2.
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731  -log sigmoid(-x)
    rank = (softplus(0.7) + softplus(0.2) + softplus(0.0)) / 3
    # L2 per row: |u|^2 + |q_pos|^2 + b_pos^2 + mean over negatives of |q_neg|^2 + b_neg^2.
    row1 = 5 + 1 + 0.01 + ((1 + 0.04) + (2 + 0.09)) / 2
    row2 = 1.25 + 1 + 0.04 + (2 + 0.09)
    expected = rank + 0.1 * (row1 + row2) / 2
    assert model.loss(batch).item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(
        model.score_all(batch)[:, 1:].detach(), torch.tensor([[1.1, 1.8, 1.3], [0.6, -1.2, -1.2]])
    )


def _cke(kg_reg: float, offset_dropout: float = 0.0) -> Cke:
    """CKE on 3 items: item 1 trained and linked to entity 1, item 2 trained and not linked,
    item 3 untrained and linked to entity 2; one triple (1, 1, 3)."""
    layout = {
        "kg": [
            {"name": "item_entity", "kind": "entity", "width": 1, "size": 4},
            {"name": "triples", "kind": "triples", "width": 3, "size": 2},
        ]
    }
    values = {"kg.item_entity": torch.tensor([0, 1, 0, 2]), "kg.triples": torch.tensor([[1, 1, 3]])}
    context = ModelContext(
        n_users=3, n_items=3, item_counts=np.array([0, 2, 1, 0]), feature_layout=layout,
        feature_values=values,
    )  # fmt: skip
    config = CkeConfig(dim=2, relation_dim=2, reg=0.0, kg_weight=0.5, kg_batch_size=3,
                       offset_dropout=offset_dropout,
                       kg_reg=kg_reg)  # fmt: skip
    model = Cke(config, context)
    with torch.no_grad():
        model.user_emb.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.0, 0.0]]))
        model.item_emb.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]))
        model.item_bias.weight.copy_(torch.tensor([[0.0], [0.1], [-0.2], [0.3]]))
        model.entity_emb.weight.copy_(
            torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        )
        model.relation_emb.weight.copy_(torch.tensor([[0.0, 0.0], [0.5, 0.5]]))
        model.projection.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 1.0]]))
    return model


def test_cke_loss_is_bpr_over_entity_summed_items_plus_transr() -> None:
    model = _cke(kg_reg=0.1)
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731  -log sigmoid(-x)
    # q_1 = eta_1 + v_1 = (2, 0); q_2 = eta_2 = (0, 1); q_3 = v_2 = (0, 1): item 3's offset
    # (5, 5) is untrained and reads as zero. u_1 = (1, 2): s = 2.1, 1.8, 2.3.
    torch.testing.assert_close(
        model.score_all(Batch(users=torch.tensor([1])))[0, 1:].detach(),
        torch.tensor([2.1, 1.8, 2.3]),
    )
    # TransR with M_1 = [[2, 0], [0, 1]], r_1 = (0.5, 0.5), triple (1, 1, 3), corrupt tail 2:
    # h = (2, 0), t = (2, 1), t' = (0, 1); f = |(.5, -.5)|^2 = 0.5, f' = |(2.5, -.5)|^2 = 6.5.
    # Norms: 4 + 0.5 + 5 + 1 = 10.5.
    transr = softplus(-6.0) + 0.1 * 10.5
    got = model.transr_loss(torch.tensor([[1, 1, 3, 2]]))
    assert got.item() == pytest.approx(transr, rel=1e-6)
    batch = Batch(
        users=torch.tensor([1]), items=torch.tensor([1]), negatives=torch.tensor([[3, 2]])
    )
    torch.manual_seed(3)
    rows = model.sample_triples()
    assert rows[:, :3].tolist() == [[1, 1, 3]] * 3 and set(rows[:, 3].tolist()) <= {1, 2, 3}
    torch.manual_seed(3)
    loss = model.loss(batch)
    bpr = (softplus(2.3 - 2.1) + softplus(1.8 - 2.1)) / 2
    expected = bpr + 0.5 * model.transr_loss(rows).item()
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    parts = model.loss_parts()
    assert parts["bpr"].item() == pytest.approx(bpr, rel=1e-6) and set(parts) == {"bpr", "kg"}


def test_cke_offset_dropout_scores_linked_training_items_by_their_entity() -> None:
    """With offset_dropout 1, a training step sees every linked item as its entity alone (item
    1: v_1 = (1, 0)); an unlinked item keeps its offset (item 2); scoring keeps them all."""
    model = _cke(kg_reg=0.0, offset_dropout=1.0)
    items = torch.tensor([1, 2, 3])
    expected_eval = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    expected_train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    with torch.no_grad():
        torch.testing.assert_close(model.train().item_factors(items), expected_train)
        torch.testing.assert_close(model.eval().item_factors(items), expected_eval)
    half = _cke(kg_reg=0.0, offset_dropout=0.5).train()
    torch.manual_seed(0)
    with torch.no_grad():
        rows = half.item_factors(torch.ones(2000, dtype=torch.int64))
    dropped = float((rows[:, 0] == 1.0).float().mean())
    assert 0.45 < dropped < 0.55  # about half the draws lose the offset


def test_cke_scores_an_untrained_linked_item_by_its_entity_alone() -> None:
    model = _cke(kg_reg=0.0)
    assert model.scores_untrained_items
    users = Batch(users=torch.tensor([1, 2]))
    with torch.no_grad():
        before = model.score_all(users)
        model.item_emb.weight[3] += 1.0  # an untrained offset: no effect
        torch.testing.assert_close(model.score_all(users), before)
        model.entity_emb.weight[2] += 1.0  # its entity moves it
        after = model.score_all(users)
    assert not torch.allclose(after[:, 3], before[:, 3])
    torch.testing.assert_close(after[:, :3], before[:, :3])
    # The item vectors the scoring job exports give the same scores.
    torch.testing.assert_close(
        model.user_embeddings(users) @ model.item_embeddings().T, after, rtol=1e-6, atol=1e-6
    )
    # Links without triples: the entity vectors would never train, so no cold item is scored.
    linked_only = Cke(model.config, ModelContext(n_users=3, n_items=3, feature_layout={
        "kg": [{"name": "item_entity", "kind": "entity", "width": 1, "size": 4},
               {"name": "triples", "kind": "triples", "width": 3, "size": 1}]}))  # fmt: skip
    assert not linked_only.scores_untrained_items


def test_sampled_softmax_with_log_q_matches_hand_computation() -> None:
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, -1.0]])
    targets = torch.tensor([2, 1, 2])  # candidates are items 1 and 2 only; item 2 twice
    lq = log_q(torch.tensor([0.0, 3.0, 1.0, 4.0]))  # q = 3/8, 1/8, 4/8 (padding excluded)
    torch.testing.assert_close(lq[1:], torch.log(torch.tensor([3 / 8, 1 / 8, 4 / 8])))
    # logits[r] = [h.q1 / 0.5 - log(3/8), h.q2 / 0.5 - log(1/8)]
    logits = [
        [2 - math.log(3 / 8), 0 - math.log(1 / 8)],
        [0 - math.log(3 / 8), 4 - math.log(1 / 8)],
        [2 - math.log(3 / 8), 4 - math.log(1 / 8)],
    ]
    labels = [1, 0, 1]
    expected = (
        sum(
            math.log(sum(math.exp(z) for z in row)) - row[y]
            for row, y in zip(logits, labels, strict=True)
        )
        / 3
    )
    loss = sampled_softmax_loss(hidden, table, targets, lq, temperature=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_log_q_is_uniform_without_counts() -> None:
    lq = log_q(torch.zeros(5))
    torch.testing.assert_close(lq[1:], torch.full((4,), math.log(1 / 4)))


def test_full_softmax_leaves_out_the_padding_column() -> None:
    hidden = torch.tensor([[1.0, 2.0]])
    table = torch.tensor([[100.0, 100.0], [1.0, 0.0], [0.0, 1.0]])  # row 0 would dominate
    expected = F.cross_entropy(torch.tensor([[1.0, 2.0]]), torch.tensor([1]))
    torch.testing.assert_close(full_softmax_loss(hidden, table, torch.tensor([2])), expected)


@pytest.mark.parametrize("query", ["causal_prefix", "leave_target_out"])
def test_two_tower_loss_matches_explicit_per_position_computation(query: str) -> None:
    model = build("two_tower", use_user_id=True, query=query).eval()
    batch = make_batch("sequence", rows=4, length=5)
    history, users, items = batch.history, batch.users, batch.items
    assert history is not None and items is not None
    table = model.item_emb.weight
    queries, targets = [], []
    for b in range(len(batch)):
        seq = [int(i) for i in history[b] if i != 0] + [int(items[b])]
        for t in range(len(seq) - 1):
            # causal: the items up to the target; leave-target-out: every other window item.
            context = seq[: t + 1] if query == "causal_prefix" else seq[: t + 1] + seq[t + 2 :]
            mean = table[context].mean(0)
            queries.append(model._tower(mean[None], users[b : b + 1])[0])
            targets.append(seq[t + 1])
    hidden = torch.stack(queries)
    candidates = sorted(set(targets))
    cand = F.normalize(table[candidates], dim=-1)
    lq = torch.log(torch.as_tensor(COUNTS[candidates], dtype=torch.float32) / COUNTS.sum())
    logits = hidden @ cand.T / model.config.temperature - lq
    labels = torch.tensor([candidates.index(t) for t in targets])
    expected = F.cross_entropy(logits, labels)
    torch.testing.assert_close(model.loss(batch), expected)


def test_deepfm_logit_is_the_papers_sum_over_all_fields() -> None:
    """DeepFM by its definition, per (user, item) pair: bias + first-order weights + FM over
    every pair of fields (explicit double loop) + DNN over the concatenated fields; score_all
    (split into sides, in chunks of 50 pairs) gives the same logits."""
    model = build("deepfm", seed=3).eval()
    with torch.no_grad():  # non-zero first-order weights everywhere
        for p in model.parameters():
            if p.dim() == 2 and p.shape[1] == 1:
                p.normal_()
    batch = make_batch("pointwise")
    users, items = batch.users, batch.items

    def fields(encoder, emb, weight, key):
        vectors = [emb.weight[key], *encoder.fields(key[None])[0]]
        first = weight.weight[key, 0] + encoder.first_order(key[None])[0].sum()
        return vectors, first

    with torch.no_grad():
        scores = model.score_all(batch)
        for b in range(len(users)):
            u, i = users[b], items[b]
            f = model.fields
            user_vectors, user_first = fields(f.user_fields, f.user_emb, f.user_weight, u)
            item_vectors, item_first = fields(f.item_fields, f.item_emb, f.item_weight, i)
            vectors = user_vectors + item_vectors
            fm = sum(
                torch.dot(vectors[a], vectors[c])
                for a in range(len(vectors))
                for c in range(a + 1, len(vectors))
            )
            user_part = model.user_in(torch.cat(user_vectors))
            h = F.relu(user_part + model.item_in(torch.cat(item_vectors)))
            for layer in model.upper:
                h = F.relu(layer(h))
            expected = user_first + item_first + fm + model.out(h)[0]
            torch.testing.assert_close(scores[b, i], expected, rtol=1e-5, atol=1e-5)


def test_nfm_logit_is_the_papers_bi_interaction_under_an_mlp() -> None:
    """NFM by its definition per pair: first-order terms + out(MLP(sum over field pairs of
    v_a * v_c)), the pairs enumerated explicitly; score_all (sides, chunks) agrees."""
    model = build("nfm", seed=5).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2 and p.shape[1] == 1:
                p.normal_()
    batch = make_batch("pointwise")
    f = model.fields
    with torch.no_grad():
        scores = model.score_all(batch)
        for b in range(len(batch)):
            u, i = batch.users[b], batch.items[b]
            user_vectors, user_first = f.users(u[None])
            item_vectors, item_first = f.items(i[None])
            vectors = [*user_vectors[0], *item_vectors[0]]
            pooled = sum(
                vectors[a] * vectors[c]
                for a in range(len(vectors))
                for c in range(a + 1, len(vectors))
            )
            h = pooled
            for layer in model.mlp:
                h = F.relu(layer(h))
            expected = user_first[0] + item_first[0] + model.out(h)[0]
            torch.testing.assert_close(scores[b, i], expected, rtol=1e-5, atol=1e-5)


def test_wide_deep_logit_is_wide_plus_deep_with_each_cross_spelled_out() -> None:
    """Wide & Deep per pair: first-order weights + every (user categorical x item categorical
    or multi) cross, its hashed weight averaged over the item's values, + the deep MLP over
    the concatenated fields; score_all (sides, chunks) gives the same logits."""
    model = build("wide_deep", seed=6).eval()
    assert model.crosses == [("region", "genres"), ("region", "brand")]
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2 and p.shape[1] == 1:
                p.normal_()
    batch = make_batch("pointwise")
    f = model.fields
    buckets = model.config.cross_buckets
    with torch.no_grad():
        scores = model.score_all(batch)
        for b in range(len(batch)):
            u, i = int(batch.users[b]), int(batch.items[b])
            user_vectors, user_first = f.users(torch.tensor([u]))
            item_vectors, item_first = f.items(torch.tensor([i]))
            region = int(FEATURE_VALUES["users.region"][u, 0])
            wide = user_first[0] + item_first[0]
            for number, name in enumerate(["genres", "brand"]):
                values = [int(v) for v in FEATURE_VALUES[f"items.{name}"][i] if v != 0]
                if region and values:
                    codes = [(number * 1_000_003 + region * 8_191 + v) % buckets for v in values]
                    wide = wide + sum(model.cross_weight.weight[c, 0] for c in codes) / len(codes)
            h = F.relu(
                model.user_in(user_vectors[0].flatten()) + model.item_in(item_vectors[0].flatten())
            )
            for layer in model.upper:
                h = F.relu(layer(h))
            expected = wide + model.out(h)[0]
            torch.testing.assert_close(scores[b, i], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention_layers", [[6], [6, 5]])
def test_din_logit_pools_the_history_by_each_candidates_attention(
    attention_layers: list[int],
) -> None:
    """DIN per (user, candidate), by its definition with an explicit loop over the history:
    a_j = att([h_j ; c ; h_j - c ; h_j * c]) for real items only, unnormalised, then
    top([profile ; sum_j a_j h_j ; c]). score_all (chunks of 60 pairs, so several column
    blocks) and candidate_scores with each row's own candidates (as training runs) agree."""
    model = build("din", seed=8, attention_layers=attention_layers).eval()
    batch = make_batch("sequence")
    history = batch.require("history")
    own = torch.tensor([[1, 17, N_ITEMS]]).repeat(len(batch), 1)
    own[:, 1] += torch.arange(len(batch))  # a different candidate per row
    with torch.no_grad():
        scores = model.score_all(batch)
        profiles = model._profile(batch.users, torch.float32)
        per_row = model.candidate_scores(history, profiles, model.item_vectors(own))
        for b in range(len(batch)):
            region = model.user_fields.fields(batch.users[b : b + 1])[0].sum(0)
            for column, item in enumerate(own[b].tolist()):
                c = model.item_vectors(torch.tensor(item))
                pooled = torch.zeros_like(c)
                for past in history[b].tolist():
                    if past:
                        h = model.item_vectors(torch.tensor(past))
                        pooled += model.attention(torch.cat([h, c, h - c, h * c]))[0] * h
                expected = model.top(torch.cat([region, pooled, c]))[0]
                torch.testing.assert_close(scores[b, item], expected, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(per_row[b, column], expected, rtol=1e-5, atol=1e-5)


def test_din_loss_never_takes_an_untrained_item_as_a_negative() -> None:
    """Items without train interactions (cold) drop out of the negatives, as in export: the
    loss is each row's log loss over its target and its trained, non-target negatives."""
    counts = COUNTS.copy()
    counts[N_ITEMS // 2 :] = 0  # the upper half of the catalogue is cold
    context = replace(CONTEXT, item_counts=counts)
    model = build("din", context=context, seed=8, negatives=6, train_positions=3).eval()
    batch = make_batch("sequence")
    torch.manual_seed(5)
    loss = model.loss(batch)
    torch.manual_seed(5)
    histories, targets, users, _ = model.training_rows(batch)
    assert len(targets) > len(batch)  # earlier positions train too
    negatives = torch.randint(1, N_ITEMS + 1, (len(targets), 6))
    total, terms = 0.0, 0
    with torch.no_grad():
        for r in range(len(targets)):
            target = int(targets[r])
            kept = [n for n in negatives[r].tolist() if n != target and counts[n] > 0]
            items = torch.tensor([[target, *kept]])
            profile = model._profile(users[r : r + 1], torch.float32)
            logits = model.candidate_scores(
                histories[r : r + 1], profile, model.item_vectors(items)
            )[0]
            labels = torch.zeros_like(logits)
            labels[0] = 1.0
            total += float(F.binary_cross_entropy_with_logits(logits, labels, reduction="sum"))
            terms += len(logits)
    assert terms < len(targets) * 7  # some negatives were cold (or the target) and dropped
    assert loss.item() == pytest.approx(total / terms, rel=1e-5)


def test_din_trains_earlier_positions_each_with_the_items_before_it() -> None:
    """A sample trains its own target (with its context) plus min(train_positions - 1,
    eligible) distinct earlier positions t: target history[t], history the items before t,
    context missing; t is eligible when an item precedes it. Over many draws every eligible
    position is drawn; train_positions = 1 trains the sample's own target only."""
    batch = make_batch("sequence")  # histories of 8, 7, ..., 1 items, then an empty one
    batch = replace(batch, context=torch.randint(1, 5, (len(batch), 2)))
    history, own_targets = batch.require("history"), batch.require("items")
    length = history.shape[1]
    eligible = {
        b: {t for t in range(1, length) if history[b, t - 1] != 0} for b in range(len(batch))
    }
    model = build("din", train_positions=3)
    seen: set[tuple[int, int]] = set()
    for seed in range(200):
        torch.manual_seed(seed)
        histories, targets, users, context = model.training_rows(batch)
        assert context is not None
        assert torch.equal(histories[: len(batch)], history)
        assert torch.equal(targets[: len(batch)], own_targets)
        assert torch.equal(context[: len(batch)], batch.context)
        row = len(batch)
        for b in range(len(batch)):
            drawn = set()
            for _ in range(min(2, len(eligible[b]))):
                matches = [
                    t for t in eligible[b]
                    if int(targets[row]) == int(history[b, t])
                    and torch.equal(histories[row, :t], history[b, :t])
                    and not histories[row, t:].any()
                ]  # fmt: skip
                assert matches, (seed, b, row)
                assert int(users[row]) == int(batch.users[b]) and not context[row].any()
                drawn.add(matches[0])
                row += 1
            assert len(drawn) == min(2, len(eligible[b]))
            seen |= {(b, t) for t in drawn}
        assert row == len(targets)
    assert seen == {(b, t) for b, ts in eligible.items() for t in ts}
    single = build("din", train_positions=1).training_rows(batch)
    assert torch.equal(single[0], history) and torch.equal(single[1], own_targets)


def test_mmoe_heads_and_loss_match_a_hand_computation() -> None:
    """MMoE by its definition, in numpy loops over experts and tasks: each task's softmax
    gate mixes the experts' outputs, its tower reads the mix; the loss is log loss plus the
    weighted squared error of the scaled rating on rated positives only."""
    config = MmoeConfig(dim=2, experts=2, expert_layers=[3], tower_layers=[], dropout=0.0,
                        rating_weight=0.7, rating_scale=5.0, rank_by="interaction",
                        score_chunk_pairs=4)  # fmt: skip
    counts = np.array([0, 3, 1, 2])
    torch.manual_seed(2)
    model = Mmoe(config, ModelContext(n_users=3, n_items=3, item_counts=counts)).eval()
    with torch.no_grad():  # non-zero first-order weights, so that they are checked too
        model.fields.user_weight.weight.normal_()
        model.fields.item_weight.weight.normal_()
    w = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731

    def by_hand(u: int, i: int) -> tuple[float, float]:
        x_u, x_i = w["fields.user_emb.weight"][u], w["fields.item_emb.weight"][i]
        hidden = np.maximum(
            w["user_in.weight"] @ x_u + w["user_in.bias"] + w["item_in.weight"] @ x_i, 0
        ).reshape(2, 3)
        gate = w["user_gate.weight"] @ x_u + w["user_gate.bias"] + w["item_gate.weight"] @ x_i
        heads = []
        for t in range(2):
            logits = gate[2 * t : 2 * t + 2]
            share = np.exp(logits) / np.exp(logits).sum()
            mix = sum(share[e] * hidden[e] for e in range(2))
            heads.append(w[f"towers.{t}.0.weight"][0] @ mix + w[f"towers.{t}.0.bias"][0])
        first = w["fields.user_weight.weight"][u, 0] + w["fields.item_weight.weight"][i, 0]
        return heads[0] + first, 5.0 * sigmoid(heads[1])

    users, items = torch.tensor([1, 2, 1, 2]), torch.tensor([1, 3, 2, 1])
    expected = np.array([by_hand(int(u), int(i)) for u, i in zip(users, items, strict=True)])
    with torch.no_grad():
        got = model.heads(model.user_side(users), model.item_side(items)).double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        scores = model.score_all(Batch(users=torch.tensor([1, 2])))
    np.testing.assert_allclose(scores[0, 1].item(), expected[0, 0], rtol=1e-5)
    np.testing.assert_allclose(scores[1, 3].item(), expected[1, 0], rtol=1e-5)
    labels = torch.tensor([1.0, 1.0, 0.0, 1.0])
    values = torch.tensor([4.0, torch.nan, torch.nan, 2.0])  # row 2 rated nothing
    batch = Batch(users=users, items=items, labels=labels, values=values)
    log_loss = -np.mean(
        [np.log(sigmoid(z)) if y else np.log(1 - sigmoid(z))
         for z, y in zip(expected[:, 0], labels.tolist(), strict=True)]
    )  # fmt: skip
    squared = (((expected[0, 1] - 4.0) / 5) ** 2 + ((expected[3, 1] - 2.0) / 5) ** 2) / 2
    assert model.loss(batch).item() == pytest.approx(log_loss + 0.7 * squared, rel=1e-5)
    assert model.loss_parts()["rating"].item() == pytest.approx(squared, rel=1e-5)
    ranked = Mmoe(config.model_copy(update={"rank_by": "expected_rating"}), model.context)
    ranked.load_state_dict(model.state_dict())
    with torch.no_grad():
        product = ranked.score_all(Batch(users=torch.tensor([1])))[0, 1].item()
    assert product == pytest.approx(sigmoid(expected[0, 0]) * expected[0, 1], rel=1e-5)


def test_neumf_load_pretrained_mixes_the_branches() -> None:
    gmf, mlp = build("neumf", seed=1, mode="gmf"), build("neumf", seed=2, mode="mlp")
    fused = build("neumf", seed=3)
    with torch.no_grad():  # non-trivial output layers, biases included
        for m in (gmf, mlp):
            m.out.weight.normal_()
            m.out.bias.fill_(0.3 if m is gmf else -0.7)
    fused.load_pretrained(gmf, mlp, alpha=0.3)
    batch = make_batch("pointwise")
    for m in (gmf, mlp, fused):
        m.eval()
    with torch.no_grad():
        expected = 0.3 * gmf.score_all(batch) + 0.7 * mlp.score_all(batch)
        torch.testing.assert_close(fused.score_all(batch), expected)
    with pytest.raises(ValueError):
        gmf.load_pretrained(gmf, mlp)


def test_neumf_chunked_scores_match_pairwise_logits() -> None:
    model = build("neumf").eval()
    batch = make_batch("pointwise", rows=5)
    with torch.no_grad():
        full = model.score_all(batch)
        model.score_chunk_pairs = 7  # forces row and column chunks
        chunked = model.score_all(batch)
        users = batch.users.repeat_interleave(N_ITEMS + 1)
        items = torch.arange(N_ITEMS + 1).repeat(len(batch))
        pairs = model.combine(model.user_side(users), model.item_side(items))
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(pairs.view(len(batch), -1), full)
    # score_all ranks by the same logit that the BCE loss trains.
    labels = torch.ones(len(batch))
    with torch.no_grad():
        loss = model.loss(Batch(users=batch.users, items=batch.items, labels=labels))
    picked = full.gather(1, batch.require("items")[:, None])[:, 0]
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(picked, labels))


@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=VARIANT_IDS)
def test_state_dict_round_trip(name: str, extra: dict[str, Any]) -> None:
    model = build(name, seed=4, **extra)
    batch = make_batch(model.sample_kind)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):  # move the weights off their initialisation
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
    # The checkpoint's context has no counts: they must come back through the state dict.
    bare = ModelContext(**CONTEXT.to_dict())
    if name == "cke":  # triples are training data, not weights: a resumed run reads the spec's
        bare = replace(bare, feature_values={"kg.triples": FEATURE_VALUES["kg.triples"]})
    rebuilt = build(name, context=bare, seed=5, **extra)
    rebuilt.load_state_dict(model.state_dict())
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model.score_all(batch), rebuilt.score_all(batch))
        assert torch.equal(seeded_loss(model, batch), seeded_loss(rebuilt, batch))
