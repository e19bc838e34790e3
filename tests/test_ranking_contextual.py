"""The learned exploration policy (``explore_policy: contextual``): exact propensities, a posterior
that learns what the rewards say, and a fold of the impression and event logs (restart, workers,
snapshot, deletion), selectable per app."""

from __future__ import annotations

import json

import numpy as np
import pytest

from liverec.config import Settings
from liverec.evaluation.ope import decisions_from_impressions, estimate
from liverec.ranking.config import RankingConfig, RankingSettings
from liverec.ranking.contextual import FEATURE_SCALE, FEATURES, N_FEATURES, LinearThompson, quantise
from liverec.ranking.replicas import ImpressionFollower
from liverec.runtime.compose import build_service
from liverec.runtime.snapshots import SnapshotWriter
from liverec.service import Service

from .test_ranking_replicas import GENRES, _react, _seed, _serve


def _settings(tmp_path, store_url: str | None = None, **over) -> Settings:
    path = tmp_path / "ranking.json"
    cfg = {"explore_slots": [2, 5], "explore_policy": "contextual", "explore_shadow": True, **over}
    path.write_text(json.dumps({"default": cfg}))
    return Settings(data_dir=tmp_path / "data", store_url=store_url, scorer="cooccurrence", ranking_config=path,
                    snapshot_interval_s=0)


def sums(service: Service) -> dict:
    return {app: (xx.tolist(), xr.tolist(), n) for app, (xx, xr, n) in service.ranking.contextual.sums().items()}


def folds(service: Service) -> tuple:
    r = service.ranking
    return sums(service), r.bandit.posteriors(), r.rewards.pending_ids()


def _traffic(service: Service, users: list[str], rounds: int = 2) -> None:
    service.ingest("default", [{"user_id": u, "item_id": f"{GENRES[k % 4]}0", "type": "view", "event_id": f"{u}-v"}
                               for k, u in enumerate(users)])
    for k in range(rounds):
        _react(service, _serve(service, users), f"r{k}")
    _serve(service, users[: len(users) // 2])  # shown, no reaction yet: pending


def test_the_policy_is_a_per_app_setting_with_a_clear_error():
    s = RankingSettings.from_dict({"default": {}, "apps": {"news": {"explore_policy": "contextual"}}})
    assert s.for_app("news").explore_policy == "contextual" and s.for_app("shop").explore_policy == "thompson"
    with pytest.raises(ValueError, match="explore_policy='ucb'.*thompson, contextual"):
        RankingConfig(explore_policy="ucb")


def test_the_posterior_learns_which_feature_pays_and_choices_follow_the_logged_distribution():
    pol = LinearThompson(seed=3)
    rng = np.random.default_rng(0)
    k_cat = FEATURES.index("category_positive")
    for _ in range(400):  # reward 1 when the user's categories are liked, 0 otherwise; relevance random
        x = np.zeros(N_FEATURES)
        x[0], x[1], x[k_cat] = 1.0, rng.random(), float(rng.random() < 0.5)
        pol.update("a", quantise(x).tolist(), float(x[k_cat]))
    mean = pol.mean("a", 4.0)
    assert mean[k_cat] > 0.8 and abs(mean[1]) < 0.2  # the rewards, not the prior's trust in relevance
    pool = np.zeros((4, N_FEATURES))
    pool[:, 0] = 1.0
    pool[:, 1] = [0.9, 0.7, 0.2, 0.1]  # the best-scored candidates are not in liked categories
    pool[2, k_cat] = 1.0
    feats = quantise(pool)
    dist = pol.distribution("a", feats, 4.0, 0.3, 512, 0.05)
    assert dist.argmax() == 2 and dist.sum() == pytest.approx(1.0) and dist.min() >= 0.05 / 4 - 1e-12
    counts = np.bincount([pol.sample(dist) for _ in range(3000)], minlength=4)
    assert np.abs(counts / counts.sum() - dist).max() < 0.05
    # a fresh app's prior is the Thompson slots' rank prior: the best-scored candidate leads
    assert LinearThompson(0).distribution("b", feats, 4.0, 0.3, 512, 0.05).argmax() == 0


def test_the_sums_do_not_depend_on_the_order_rewards_arrive_in():
    rng = np.random.default_rng(1)
    rows = [(quantise(rng.normal(0, 1.5, N_FEATURES)).tolist(), float(rng.choice([0.0, 0.5, 1.0]))) for _ in range(300)]
    a, b = LinearThompson(), LinearThompson()
    for x, r in rows:
        a.update("s", x, r)
    for k in rng.permutation(len(rows)).tolist():
        b.update("s", *rows[k])
    (xx_a, xr_a, n_a), (xx_b, xr_b, n_b) = a.sums()["s"], b.sums()["s"]
    assert n_a == n_b == 300 and (xx_a == xx_b).all() and (xr_a == xr_b).all()
    assert np.array_equal(a.mean("s", 4.0), b.mean("s", 4.0))
    restored = LinearThompson()
    restored.load(json.loads(json.dumps(a.rows())))  # the snapshot's plain data
    assert np.array_equal(restored.mean("s", 4.0), a.mean("s", 4.0))


def test_contextual_slots_log_exact_propensities_features_and_the_shadow_distribution(tmp_path):
    service = build_service(_settings(tmp_path))
    service.start()
    try:
        _seed(service)
        users = [f"u{k}" for k in range(6)]
        _traffic(service, users)
        logged = list(service.ranking.impressions.scan("default"))
        explored = [i for i in logged if i.explored and i.policy == "contextual"]
        assert explored
        cfg = RankingConfig()
        for imp in explored:
            p = np.array(imp.pool_propensities)
            assert p.sum() == pytest.approx(1.0, abs=1e-9) and p.min() >= cfg.explore_epsilon / len(p) - 1e-12
            assert imp.propensity == pytest.approx(p[imp.pool.index(imp.item_id)])
            assert np.array(imp.pool_features).shape == (len(imp.pool), N_FEATURES)
            assert imp.features == imp.pool_features[imp.pool.index(imp.item_id)]
            assert sum(imp.shadow_propensities) == pytest.approx(1.0)  # the Thompson slots' distribution
        assert all(i.features is not None and len(i.features) == N_FEATURES for i in logged)
        # the regression learned from every shown item whose reward is decided
        assert sums(service)["default"][2] == sum(service.ranking.rewards.rewards.values())
        # off-policy evaluation reads the logged features and the shadow policy
        decisions = decisions_from_impressions([(i, 0.5) for i in explored])
        assert all(d.features is not None and d.features.max() <= 4.0 for d in decisions)
        assert estimate(decisions, "shadow", n_boot=20)["ips"] >= 0.0
        view = service.recommend("default", "u0", n=8, explore=True)["items"]
        assert any(b["kind"] == "exploration" and b["policy"] == "contextual" for i in view for b in i["because"])
    finally:
        service.close()


def test_a_restart_and_a_snapshot_fold_the_same_contextual_posterior(tmp_path):
    settings = _settings(tmp_path)
    first = build_service(settings)
    first.start()
    try:
        _seed(first)
        users = [f"u{k}" for k in range(6)]
        _traffic(first, users)
        first.component(ImpressionFollower).poll()
        assert SnapshotWriter(lambda: first, interval_s=0).write_ranking(with_users=True) is not None
        _react(first, _serve(first, users[:3]), "late")  # after the snapshot
        before = folds(first)
        assert before[0]["default"][2] > 0 and any(before[0]["default"][1])
    finally:
        first.close()
    again = build_service(settings)
    again.start()
    try:
        assert again.component(ImpressionFollower).restored is not None  # the snapshot and the logs after it
        assert folds(again) == before
    finally:
        again.close()


def test_two_workers_reach_the_same_contextual_posterior(tmp_path, store_url):
    settings = _settings(tmp_path, store_url)
    a, b = build_service(settings), build_service(settings)
    a.start()
    b.start()
    try:
        follow_a, follow_b = a.component(ImpressionFollower), b.component(ImpressionFollower)
        follow_a.stop()
        follow_b.stop()
        _seed(a)
        users = [f"u{k}" for k in range(6)]
        slates = _serve(a, users)
        a.ranking.impressions.flush()
        _react(b, slates, "r1")  # B folds the feedback before it reads A's impressions
        follow_b.poll()
        a.follower.catch_up()
        slates = _serve(b, users[:4])
        b.ranking.impressions.flush()
        follow_a.poll()
        _react(a, slates, "r2")
        b.follower.catch_up()
        follow_b.poll()
        assert sums(a)["default"][2] > 0
        assert folds(a) == folds(b)
    finally:
        a.close()
        b.close()


def test_a_deleted_users_share_leaves_the_contextual_posterior(tmp_path):
    settings = _settings(tmp_path)
    live = build_service(settings)
    live.start()
    try:
        _seed(live)
        _traffic(live, [f"u{k}" for k in range(5)] + ["gone"])
        before = sums(live)
        live.delete_user("default", "gone")
        assert live.component(ImpressionFollower).wait_refolded(30)
        after = folds(live)
        assert after[0]["default"][2] < before["default"][2]  # the user's rewarded impressions are out
    finally:
        live.close()
    rebuilt = build_service(settings)
    rebuilt.start()
    try:
        assert folds(rebuilt) == after  # what a rebuild of the logs without the user folds
    finally:
        rebuilt.close()


def test_a_wrong_feature_length_is_not_folded():
    pol = LinearThompson()
    pol.update("a", [FEATURE_SCALE] * (N_FEATURES - 1), 1.0)  # logged under another feature definition
    assert pol.count("a") == 0


def test_the_transformer_user_vector_enters_as_its_cosine_with_each_candidate(one_torch_thread):
    from liverec.catalog import CatalogIndex
    from liverec.events import DEFAULT_TYPES
    from liverec.model.scorer import TransformerScorer
    from liverec.model.synthetic import clustered_catalog
    from liverec.ranking import build_ranking
    from liverec.recommend.pipeline import Pipeline, Policy, RecommendRequest

    from .test_ann_retrieval import _items, _state

    cat = clustered_catalog(400, clusters=8, d_model=16, n_blocks=1, max_len=20, seed=2)
    scorer = TransformerScorer("a", cat.model, cat.item_ids)
    state = _state(cat.history(np.random.default_rng(0), 12, topics=2))
    catalog = CatalogIndex()
    catalog.load(_items(cat))
    ranking = build_ranking(catalog, lambda: scorer, lambda app, item, n: scorer.similar(app, item, n), DEFAULT_TYPES, None,
                            settings=RankingSettings(RankingConfig(explore_policy="contextual")), seed=0)
    pipeline = Pipeline(lambda app, user: state, scorer, Policy(catalog.get), ranking=ranking)
    pipeline.recommend(RecommendRequest("a", "u", 10))
    user = scorer.score("a", state, 10).user  # (D,) the state after the newest event
    assert user is not None and user.shape == (16,)
    vecs = cat.model.item_vectors()[1:].detach().numpy()  # (N, D)
    row = {item: k for k, item in enumerate(cat.item_ids)}
    k_cos = FEATURES.index("user_cosine")
    shown = list(ranking.impressions.scan("a"))
    assert len(shown) == 10
    for imp in shown:
        e = vecs[row[imp.item_id]]
        cosine = float(e @ user / (np.linalg.norm(e) * np.linalg.norm(user)))
        assert abs(imp.features[k_cos] - cosine * FEATURE_SCALE) <= 1.0, (imp.item_id, imp.features, cosine)
    assert any(abs(imp.features[k_cos]) > 8 for imp in shown)
    assert scorer.score("a", None, 10).user is None  # no history: no user vector


def test_learning_from_the_exploration_slots_only(tmp_path):
    service = build_service(_settings(tmp_path, contextual_learn="explored"))
    service.start()
    try:
        _seed(service)
        _traffic(service, [f"u{k}" for k in range(6)])
        logged = list(service.ranking.impressions.scan("default"))
        assert all((i.features is not None) == i.explored for i in logged) and any(i.explored for i in logged)
        assert 0 < sums(service)["default"][2] < sum(service.ranking.rewards.rewards.values())
    finally:
        service.close()
    with pytest.raises(ValueError, match="contextual_learn=.all.: expected one of shown, explored"):
        RankingConfig(contextual_learn="all")


def test_category_features_from_the_category_matrix_equal_the_per_item_reference(tmp_path):
    from liverec.ranking.stages import RankingStages
    from liverec.recommend.pipeline import RecommendRequest

    service = build_service(_settings(tmp_path))
    service.start()
    try:
        _seed(service)
        users = [f"u{k}" for k in range(6)]
        _traffic(service, users)  # likes, skips and dislikes: categories with feedback both ways
        fast = service.ranking
        reference = RankingStages(fast.settings, fast.space, fast.items, fast.bandit, None, fast.types, fast.clock,
                                  categories=None, contextual=fast.contextual)
        compared = 0
        for user in users:
            state = service.state.get("default", user)
            request = RecommendRequest("default", user, 8, explore=True)
            scored = service.pipeline.scorer_for("default").score("default", state, 200)
            ctx = fast._context(request, state)
            ids, raw = fast._pool(request, state, scored, lambda i: True, ctx.cfg, ctx.now, ctx.cfg.pool, ctx.summary, False)
            cm = fast.categories("default")
            member = cm.of(ids)
            final, adj = fast._final_scores(ctx, ids, raw, cm, member)
            order = np.argsort(-final, kind="stable")
            ks = order[:20].tolist()
            got = fast._featuriser(ctx, ids, final, adj, order, None, cm, member)(ks, 4)
            want = reference._featuriser(ctx, ids, final, adj, order, None, None, None)(ks, 4)
            assert np.array_equal(got, want), (user, got - want)
            compared += int(np.abs(got[:, 4:7]).sum() > 0)
        assert compared >= 3  # users whose feedback moved the category features
    finally:
        service.close()


def test_thompson_slots_alone_compute_and_log_no_features(tmp_path):
    service = build_service(_settings(tmp_path, explore_policy="thompson", explore_shadow=False))
    service.start()
    try:
        _seed(service)
        _traffic(service, [f"u{k}" for k in range(4)])
        logged = list(service.ranking.impressions.scan("default"))
        assert any(i.explored for i in logged) and all(i.features is None and not i.pool_features for i in logged)
        assert sums(service) == {} and service.ranking.bandit.posteriors()
    finally:
        service.close()
