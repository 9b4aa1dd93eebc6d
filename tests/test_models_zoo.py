"""The session, factorisation and autoencoder models against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_models import N_ITEMS, build, left_pad, make_batch

from recpipe.data.batch import Batch
from recpipe.models import RecModel
from recpipe.models.bag import multinomial_nll

CAUSAL_MODELS = ["sasrec", "gru4rec", "narm", "stamp", "svdpp"]
BAG_MODELS = ["mult_vae", "cdae", "recvae"]


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


def outputs(model: RecModel, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """The model's per-position vectors [B, L, d] (SVD++ also reads the user)."""
    if model.name == "svdpp":
        return model.sequence_output(users, history)  # type: ignore[operator]
    return model.sequence_output(history)  # type: ignore[operator]


@pytest.mark.parametrize("name", CAUSAL_MODELS)
def test_positions_read_only_their_prefix(name: str) -> None:
    model = build(name).eval()
    batch = make_batch("sequence", rows=3, length=8)
    history, users = batch.require("history")[:2], batch.users[:2]  # lengths 8 and 7
    with torch.no_grad():
        out = outputs(model, users, history)
        earlier = history.clone()
        earlier[:, 3] = earlier[:, 3] % N_ITEMS + 1
        out_earlier = outputs(model, users, earlier)
    # An earlier item reaches the last position, but not the positions before it.
    assert not torch.allclose(out_earlier[:, -1], out[:, -1])
    torch.testing.assert_close(out_earlier[:, :3], out[:, :3])


def test_narm_last_position_matches_an_explicit_loop() -> None:
    """GRU over the unpadded items, then the paper's attention written out term by term."""
    model = build("narm").eval()
    items = [4, 9, 9, 17, 2]
    history = left_pad([items], 8)
    with torch.no_grad():
        got = model.sequence_output(history)[0, -1]
        states, _ = model.gru(model.item_emb(torch.tensor([items])))
        states = states[0]
        h_t = states[-1]
        local = torch.zeros_like(h_t)
        for h_j in states:
            alpha = model.v(torch.sigmoid(model.a_global(h_t) + model.a_local(h_j)))
            local += alpha * h_j
        expected = model.decoder(torch.cat([h_t, local]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_stamp_last_position_matches_the_paper_formulas() -> None:
    model = build("stamp").eval()
    items = [3, 8, 1, 30]
    history = left_pad([items], 6)
    with torch.no_grad():
        got = model.sequence_output(history)[0, -1]
        x = model.item_emb(torch.tensor(items))
        x_t, m_s = x[-1], x.mean(0)
        m_a = torch.zeros_like(x_t)
        for x_j in x:
            energy = model.w_item(x_j) + model.w_last(x_t) + model.w_mean(m_s)
            m_a += model.w0(torch.sigmoid(energy)) * x_j
        h_s = torch.tanh(model.mlp_general(m_a))
        h_t = torch.tanh(model.mlp_last(x_t))
        expected = h_s * h_t
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_svdpp_scores_match_numpy() -> None:
    model = build("svdpp").eval()
    items, user = [5, 6, 6, 40], 7
    batch = Batch(users=torch.tensor([user]), history=left_pad([items], 6))
    with torch.no_grad():
        got = model.score_all(batch)[0].numpy()
    p = model.user_emb.weight.detach().numpy()[user].astype(np.float64)
    y = model.implicit_emb.weight.detach().numpy().astype(np.float64)
    q = model.item_emb.weight.detach().numpy().astype(np.float64)
    b = model.item_bias.weight.detach().numpy()[:, 0].astype(np.float64)
    expected = b + q @ (p + y[items].sum(0) / math.sqrt(len(items)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", BAG_MODELS)
def test_bag_models_ignore_the_order_of_the_history(name: str) -> None:
    model = build(name).eval()
    batch = make_batch("sequence", rows=4, length=6)
    shuffled = batch.require("history").clone()
    shuffled[0, :] = shuffled[0, torch.tensor([3, 0, 5, 1, 4, 2])]
    with torch.no_grad():
        scores = model.score_all(batch)
        reordered = model.score_all(Batch(users=batch.users, history=shuffled))
        other = batch.require("history").clone()
        other[0, -1] = other[0, -1] % N_ITEMS + 1
        changed = model.score_all(Batch(users=batch.users, history=other))
    torch.testing.assert_close(scores, reordered, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(changed[0], scores[0])


def multi_hot(history: torch.Tensor) -> torch.Tensor:
    """[B, n_items + 1] item counts of each row (padding column zero)."""
    dense = torch.zeros(len(history), N_ITEMS + 1)
    dense.scatter_add_(1, history, torch.ones_like(history, dtype=torch.float32))
    dense[:, 0] = 0
    return dense


def test_mult_vae_matches_the_dense_multi_hot_network() -> None:
    model = build("mult_vae").eval()
    batch = make_batch("sequence", rows=5, length=6)
    history = batch.require("history")
    with torch.no_grad():
        x = multi_hot(history)
        x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
        # Distinct items: the L2 norm of the multi-hot row is sqrt(number of items).
        assert all(len(set(r[r != 0].tolist())) == int((r != 0).sum()) for r in history[:2])
        h = torch.tanh(x[:2] @ model.item_in.weight + model.in_bias)
        mu = model.to_latent(h)[:, : model.config.dim]
        dec = torch.tanh(model.decoder[0](mu))
        expected = dec @ model.item_out.weight.T + model.out_bias.weight[:, 0]
        got = model.score_all(Batch(users=batch.users[:2], history=history[:2]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_multinomial_nll_matches_hand_computation() -> None:
    logits = torch.tensor([[9.0, 1.0, 2.0, 0.0], [5.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    targets = torch.tensor([[1, 2, 2], [3, 0, 0], [0, 0, 0]])  # the last row has no target
    log_p = [[1 - math.log(math.e + math.e**2 + 1), 2 - math.log(math.e + math.e**2 + 1)],
             [1 - math.log(2 + math.e)]]  # fmt: skip
    row1 = -(log_p[0][0] + 2 * log_p[0][1])  # summed over the bag, not averaged
    row2 = -log_p[1][0]
    assert multinomial_nll(logits, targets).item() == pytest.approx((row1 + row2) / 2, rel=1e-6)


def test_mult_vae_kl_weight_anneals_with_training_steps_and_is_saved() -> None:
    model = build("mult_vae", anneal_steps=4, beta_max=0.2)
    batch = make_batch("sequence")
    betas = []
    for _ in range(6):
        betas.append(model.beta())
        model.loss(batch)
    assert betas == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2])
    model.eval()
    model.loss(batch)  # evaluation does not count as training
    assert int(model.steps) == 6
    rebuilt = build("mult_vae", anneal_steps=4, beta_max=0.2)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.beta() == pytest.approx(0.2)


def layer_norm(h: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    """``(h - mean) / sqrt(var + eps) * weight + bias`` over the last dimension, by hand."""
    centred = h - h.mean(-1, keepdim=True)
    scaled = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps)
    return scaled * norm.weight + norm.bias


def recvae_mu(model: RecModel, x: torch.Tensor) -> torch.Tensor:
    """RecVAE's encoder mean written out on the dense multi-hot rows ``x``, L2-normalised:
    ``h_1 = LN(swish(x W_1))``, ``h_k = LN(swish(h_{k-1} W_k + h_1 + ... + h_{k-1}))``."""
    enc = model.encoder  # type: ignore[attr-defined]
    x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    pre = x @ enc.item_in.weight + enc.in_bias
    layers = [layer_norm(pre * torch.sigmoid(pre), enc.norms[0])]
    for k, dense in enumerate(enc.dense, start=1):
        pre = layers[-1] @ dense.weight.T + dense.bias + sum(layers)
        layers.append(layer_norm(pre * torch.sigmoid(pre), enc.norms[k]))
    return layers[-1] @ enc.to_mu.weight.T + enc.to_mu.bias


def test_recvae_scores_the_dense_densely_connected_network() -> None:
    model = build("recvae").eval()
    with torch.no_grad():
        for p in model.parameters():  # layer norms start at (1, 0): make every term count
            p.add_(0.1 * torch.randn_like(p))
    # Distinct items per row, so the multi-hot row's L2 norm is sqrt(number of items).
    history = left_pad([[3, 9, 1, 22], [5], [2, 4, 6, 8, 10, 12]], 6)
    with torch.no_grad():
        mu = recvae_mu(model, multi_hot(history))
        expected = mu @ model.item_out.weight.T + model.out_bias.weight[:, 0]
        got = model.score_all(Batch(users=torch.tensor([0, 1, 2]), history=history))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_recvae_loss_is_nll_plus_kl_to_the_composite_prior_weighed_by_bag_size() -> None:
    model = build("recvae", gamma=0.03, prior_weights=[0.2, 0.5, 0.3]).eval()
    with torch.no_grad():
        for p in model.prior_encoder.parameters():  # an older encoder: not the current one
            p.add_(0.2 * torch.randn_like(p))
    history = left_pad([[1, 4, 6], [7], [2, 3, 5, 8, 9]], 5)
    items = torch.tensor([9, 7, 11])
    batch = Batch(users=torch.tensor([0, 1, 2]), items=items, history=history)
    with torch.no_grad():
        got = model.loss(batch).item()
        mu, log_var = model.encoder(history, 1.0)  # eval: z = mu
        old_mu, old_log_var = model.prior_encoder(history, 1.0)
        std = torch.exp(0.5 * log_var)
        log_q = torch.distributions.Normal(mu, std).log_prob(mu).sum(-1)
        mix = torch.distributions.Categorical(torch.tensor([0.2, 0.5, 0.3]))
        wide_std = torch.full_like(mu, math.exp(5.0))  # log variance 10
        comps = torch.distributions.Normal(
            torch.stack([torch.zeros_like(mu), old_mu, torch.zeros_like(mu)], dim=-1),
            torch.stack([torch.ones_like(mu), torch.exp(0.5 * old_log_var), wide_std], dim=-1),
        )
        prior = torch.distributions.MixtureSameFamily(mix, comps)
        log_p = prior.log_prob(mu).sum(-1)
        bag_sizes = torch.tensor([4.0, 2.0, 6.0])  # history plus the target (7 twice in row 2)
        logits = mu @ model.item_out.weight.T + model.out_bias.weight[:, 0]
        nll = multinomial_nll(logits, torch.cat([history, items[:, None]], dim=1))
        expected = nll + (0.03 * bag_sizes * (log_q - log_p)).mean()
    assert got == pytest.approx(expected.item(), rel=1e-5)


def test_recvae_prior_follows_the_encoder_every_refresh_steps_and_never_trains() -> None:
    model = build("recvae", prior_refresh_steps=3)
    batch = make_batch("sequence")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    snapshots = []
    for _ in range(7):
        optimizer.zero_grad()
        model.loss(batch).backward()
        assert all(p.grad is None for p in model.prior_encoder.parameters())
        snapshots.append([p.detach().clone() for p in model.encoder.parameters()])
        optimizer.step()
    # Refreshed before steps 0, 3 and 6: the prior holds the encoder as it was before step 6.
    for old, at_step_6 in zip(model.prior_encoder.parameters(), snapshots[6], strict=True):
        torch.testing.assert_close(old, at_step_6)
    assert not all(
        torch.equal(a, b) for a, b in zip(snapshots[6], model.encoder.parameters(), strict=True)
    )
    rebuilt = build("recvae", prior_refresh_steps=3)
    rebuilt.load_state_dict(model.state_dict())
    assert int(rebuilt.steps) == 7
    for a, b in zip(
        rebuilt.prior_encoder.parameters(), model.prior_encoder.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b)


def test_cdae_loss_matches_hand_computation() -> None:
    model = build("cdae", negatives=3).eval()
    users = torch.tensor([2, 5])
    history = left_pad([[1, 4], [7]], 3)
    batch = Batch(users=users, items=torch.tensor([9, 7]), history=history)
    torch.manual_seed(11)
    with torch.no_grad():
        got = model.loss(batch).item()
    torch.manual_seed(11)
    negatives = torch.randint(1, N_ITEMS + 1, (2, 3))
    with torch.no_grad():
        hidden = torch.sigmoid(
            multi_hot(history) @ model.item_in.weight + model.user_node(users) + model.hidden_bias
        )
        out = hidden @ model.item_out.weight.T + model.out_bias.weight[:, 0]
    terms = []
    bags = [[1, 4, 9], [7, 7]]  # history and target of each row
    for row, (positives, user_neg) in enumerate(zip(bags, negatives.tolist(), strict=True)):
        terms += [-F.logsigmoid(out[row, i]).item() for i in positives]
        terms += [-F.logsigmoid(-out[row, j]).item() for j in user_neg if j not in positives]
    assert got == pytest.approx(float(np.mean(terms)), rel=1e-5)


def test_irgan_players_only_move_their_own_parameters() -> None:
    model = build("irgan")
    batch = make_batch("pairwise")
    d_loss, g_loss = model.player_losses(batch)  # type: ignore[operator]
    for loss, moved, kept in ((d_loss, "discriminator", "generator"),
                              (g_loss, "generator", "discriminator")):  # fmt: skip
        model.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        grads = {n: p.grad for n, p in model.named_parameters()}
        assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items()
                   if n.startswith(moved) and "bias" not in n)  # fmt: skip
        assert all(g is None or not g.any() for n, g in grads.items() if n.startswith(kept))


def test_irgan_generator_draws_follow_its_softmax() -> None:
    """The published scores are the generator's; its log-probabilities are their softmax."""
    model = build("irgan", temperature=0.5).eval()
    batch = make_batch("pairwise")
    with torch.no_grad():
        scores = model.score_all(batch)[:, 1:]
        log_p = model.generator_log_probs(batch.users)  # type: ignore[operator]
    expected = scores / 0.5 - torch.logsumexp(scores / 0.5, dim=1, keepdim=True)
    torch.testing.assert_close(log_p, expected, rtol=1e-5, atol=1e-5)


def test_irgan_mf_mode_is_the_generator_alone_as_bpr_mf() -> None:
    """mode: mf has no discriminator; its loss is BPR over the samples' negatives plus the L2
    of each row's own generator factors, written out here row by row."""
    model = build("irgan", mode="mf", reg=0.01)
    assert model.discriminator is None  # type: ignore[attr-defined]
    assert type(model).user_table_names(model.config) == ("generator.user",)
    batch = make_batch("pairwise")
    g = model.generator  # type: ignore[attr-defined]
    with torch.no_grad():
        loss = model.loss(batch)
        terms, l2 = [], []
        for u, i, negatives in zip(
            batch.users, batch.items, batch.require("negatives"), strict=True
        ):
            p = g.user.weight[u]
            score = {int(j): float(p @ g.item.weight[j] + g.bias.weight[j, 0])
                     for j in [int(i), *negatives.tolist()]}  # fmt: skip
            terms += [-math.log(1 / (1 + math.exp(score[int(j)] - score[int(i)])))
                      for j in negatives]  # fmt: skip
            q, b = g.item.weight, g.bias.weight[:, 0]
            own = [int(i), *negatives.tolist()]
            l2.append(float(p @ p) + sum(float(q[j] @ q[j]) + float(b[j]) ** 2 for j in own))
    assert loss.item() == pytest.approx(np.mean(terms) + 0.01 * np.mean(l2), rel=1e-5)


def test_irgan_pretrains_as_mf_and_starts_both_players_from_it() -> None:
    """pretrain_epochs > 0 asks for one mf run of that many epochs; from_pretrained copies the
    trained generator into both players, so the game's first scores are the MF model's."""
    from test_models import CONTEXT

    model = build("irgan", pretrain_epochs=3)
    cls = type(model)
    runs = cls.pretraining(model.config)
    assert list(runs) == ["mf"]
    mf_config = runs["mf"]
    assert (mf_config.mode, mf_config.epochs, mf_config.pretrain_epochs) == ("mf", 3, 0)  # type: ignore[attr-defined]
    assert cls.pretraining(build("irgan", pretrain_epochs=0).config) == {}
    assert cls.pretraining(mf_config) == {}
    torch.manual_seed(3)
    trained = cls(mf_config, CONTEXT)
    game = cls.from_pretrained(model.config, CONTEXT, {"mf": trained})
    batch = make_batch("pairwise")
    with torch.no_grad():
        torch.testing.assert_close(game.score_all(batch), trained.score_all(batch))
        for name, value in trained.generator.state_dict().items():  # type: ignore[attr-defined]
            assert torch.equal(game.generator.state_dict()[name], value)  # type: ignore[attr-defined]
            assert torch.equal(game.discriminator.state_dict()[name], value)  # type: ignore[attr-defined]
    # The game then trains both players from there.
    assert set(game.loss_parts()) == set()
    game.loss(batch)
    assert set(game.loss_parts()) == {"discriminator", "generator"}


def test_rum_scores_match_an_explicit_memory_read() -> None:
    model = build("rum", memory_size=3, memory_weight=0.7).eval()
    user, items = 4, [6, 2, 11, 30]  # the memory holds the last three
    batch = Batch(users=torch.tensor([user, user]), history=left_pad([items, items[:1]], 6))
    with torch.no_grad():
        got = model.score_all(batch)
        q, p = model.item_emb.weight, model.user_emb.weight[user]
        for row, memory_items in enumerate(([2, 11, 30], [6])):
            x = model.item_emb(torch.tensor(memory_items))
            for i in (1, 7, 30, N_ITEMS):
                weights = torch.softmax(x @ q[i], dim=0)
                read = (weights[:, None] * x).sum(0)
                expected = q[i] @ (p + 0.7 * read)
                torch.testing.assert_close(got[row, i], expected, rtol=1e-5, atol=1e-6)


def test_rum_memory_holds_the_latest_items_at_each_position() -> None:
    from recpipe.models.rum import memory_slots

    history = left_pad([[5, 6, 7, 8]], 5)
    assert memory_slots(history, 2)[0].tolist() == [[0, 0], [0, 5], [5, 6], [6, 7], [7, 8]]


def test_item_vectors_start_the_item_table_at_its_initial_scale() -> None:
    model = build("gru4rec")  # dim 16
    before = model.item_emb.weight.detach().clone()
    vectors = torch.zeros(N_ITEMS - 5, 16)  # fewer rows than items: the rest keep their init
    vectors[3] = torch.arange(16.0)
    vectors[7] = -1.0
    assert model.init_item_vectors(vectors) == 2
    after = model.item_emb.weight.detach()
    scale = before[1:].norm(dim=1).mean()
    torch.testing.assert_close(after[3], vectors[3] / vectors[3].norm() * scale)
    torch.testing.assert_close(after[7], vectors[7] / vectors[7].norm() * scale)
    untouched = [i for i in range(N_ITEMS + 1) if i not in (3, 7)]
    assert torch.equal(after[untouched], before[untouched])
    with pytest.raises(ValueError, match="dimensions"):
        model.init_item_vectors(torch.ones(4, 8))
    with pytest.raises(ValueError, match="no item table"):
        build("mult_vae").init_item_vectors(torch.ones(4, 8))
