"""Live experiments: stable, proportional assignment; valid team-draft slates; the metrics fold
equal to a recomputation in any order; intervals that match a bootstrap by user; and, with
simulated users over the API, a variant known to be better wins at the stated confidence."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest

from liverec.events import Event
from liverec.experiments.interleave import team_draft
from liverec.experiments.metrics import IMPRESSIONS, POSITIVE, ExperimentFold, Tally, sign_test
from liverec.experiments.spec import Experiment, unit_hash


def experiment(kind: str = "split", shares=(0.5, 0.5), traffic: float = 1.0, exp_id: str = "e1") -> Experiment:
    variants = [{"name": n, "share": s} for n, s in zip("ABCD", shares)]
    return Experiment.from_record(exp_id, "shop", "t", kind, {"variants": variants, "traffic": traffic, "window_s": 100.0}, 0.0)


# ---- assignment ------------------------------------------------------------------------------


def test_assignment_is_stable_and_proportional():
    exp = experiment(shares=(0.2, 0.3, 0.5))
    users = [f"user-{k}" for k in range(20_000)]
    first = [exp.assign(u).name for u in users]
    again = experiment(shares=(0.2, 0.3, 0.5))  # another process: the same answers
    assert first == [again.assign(u).name for u in users]
    counts = {n: first.count(n) / len(users) for n in "ABC"}
    for name, share in zip("ABC", (0.2, 0.3, 0.5)):
        assert abs(counts[name] - share) < 0.015, counts
    # another experiment splits the same users independently of this one
    other = experiment(shares=(0.2, 0.3, 0.5), exp_id="e2")
    same = sum(a == other.assign(u).name for a, u in zip(first, users)) / len(users)
    assert abs(same - (0.04 + 0.09 + 0.25)) < 0.02
    # traffic: the share of users in the experiment at all
    half = experiment(traffic=0.4)
    inside = [half.assign(u) is not None for u in users]
    assert abs(np.mean(inside) - 0.4) < 0.015
    assert 0.0 <= unit_hash("e1", "u") < 1.0


# ---- interleaving ----------------------------------------------------------------------------


def test_team_draft_slates_are_valid_and_balanced():
    rng = random.Random(0)
    for trial in range(300):
        pool = [f"i{k}" for k in range(rng.randint(0, 30))]
        a = rng.sample(pool, rng.randint(0, len(pool)))
        b = rng.sample(pool, rng.randint(0, len(pool)))
        n = rng.randint(1, 12)
        slate = team_draft(a, b, n, seed=trial)
        items = [item for item, _ in slate]
        assert len(items) == len(set(items)), slate  # no duplicates
        assert len(items) == min(n, len(set(a) | set(b)))
        assert set(items) <= set(a) | set(b)
        for team, ranking in ((0, a), (1, b)):
            picks = [item for item, t in slate if t == team]
            assert all(item in ranking for item in picks)
            assert [ranking.index(p) for p in picks] == sorted(ranking.index(p) for p in picks)  # in its own order
        # balanced while both rankers had items to give
        sizes = [0, 0]
        for item, team in slate:
            sizes[team] += 1
            if len(a) >= n and len(b) >= n and len(set(a) | set(b)) >= 2 * n:
                assert abs(sizes[0] - sizes[1]) <= 1
        assert team_draft(a, b, n, seed=trial) == slate  # the coin is seeded
    # over many seeds each team leads the slate about half the time
    leads = [team_draft(["x", "y"], ["y", "x"], 2, seed=s)[0][1] for s in range(2000)]
    assert 0.45 < np.mean(leads) < 0.55


# ---- the metrics fold ------------------------------------------------------------------------


@dataclass
class Imp:
    app: str
    user_id: str
    item_id: str
    timestamp: float
    event_seq: int
    request_id: str
    position: int
    experiment: str
    variant: str


def traffic(seed: int, kind: str = "split"):
    """Tagged impressions and feedback events, each event with its log position."""
    rng = random.Random(seed)
    imps, events, seqs = [], [], []
    seq = 0
    for r in range(200):
        user = f"u{rng.randrange(25)}"
        variant = rng.choice("AB")
        at = seq
        for pos in range(4):
            team = variant if kind == "split" else rng.choice("AB")
            imps.append(Imp("shop", user, f"i{rng.randrange(12)}", 1000.0 + r, at, f"r{r}", pos, "e1", team))
        for _ in range(rng.randrange(4)):
            seq += 1
            item = rng.choice([i.item_id for i in imps[-4:]] + ["i99"])
            etype = rng.choice(["click", "like", "skip", "dislike", "view", "impression"])
            events.append(Event("shop", f"ev{seq}", user, etype, 1000.0 + r + rng.choice([1.0, 50.0, 500.0]), item))
            seqs.append(seq)
    events.append(Event("news", "other", "u1", "click", 1001.0, "i1"))  # another app: not kept
    seqs.append(seq + 1)
    return imps, events, seqs


@pytest.mark.parametrize("kind", ["split", "interleave"])
def test_metrics_fold_incremental_equals_recomputed(kind):
    imps, events, seqs = traffic(1, kind)
    reference = ExperimentFold()
    reference.register(experiment(kind))
    reference.impressions(imps)
    reference.events(events, seqs)
    rng = random.Random(7)
    for _ in range(5):  # the two logs read in random interleavings and chunk sizes
        fold = ExperimentFold()
        fold.register(experiment(kind))
        i = j = 0
        while i < len(imps) or j < len(events):
            if j >= len(events) or (i < len(imps) and rng.random() < 0.5):
                k = rng.randint(1, 9)
                fold.impressions(imps[i:i + k])
                i += k
            else:
                k = rng.randint(1, 5)
                fold.events(events[j:j + k], seqs[j:j + k])
                j += k
        assert fold.state("e1") == reference.state("e1")
        assert fold.summary("e1") == reference.summary("e1")
    # and the counts are what a direct count of the definition gives
    tally = reference.counts["e1"].tallies
    direct = {"A": [0, 0], "B": [0, 0]}
    for imp in imps:
        hit = any(e.app == imp.app and e.user_id == imp.user_id and e.item_id == imp.item_id and s > imp.event_seq
                  and e.timestamp <= imp.timestamp + 100.0 and e.type in ("click", "like", "view")
                  for e, s in zip(events, seqs))
        direct[imp.variant][0] += 1
        direct[imp.variant][1] += int(hit)
    assert {v: [tally[v].s1[IMPRESSIONS], tally[v].s1[POSITIVE]] for v in "AB"} == direct
    if kind == "interleave":
        duel = reference.counts["e1"].duel
        assert sum(duel.slates.values()) == 200 and duel.wins[0] + duel.wins[1] + duel.ties == len(duel.credit)


def test_forgetting_a_user_equals_a_fold_without_them():
    imps, events, seqs = traffic(2, "interleave")
    fold = ExperimentFold()
    fold.register(experiment("interleave"))
    fold.impressions(imps)
    fold.events(events, seqs)
    assert fold.forget_user("shop", "u3") == 1
    without = ExperimentFold()
    without.register(experiment("interleave"))
    without.impressions([i for i in imps if i.user_id != "u3"])
    without.events([e for e in events if e.user_id != "u3"], [s for e, s in zip(events, seqs) if e.user_id != "u3"])
    assert fold.state("e1") == without.state("e1")


def test_user_clustered_interval_matches_a_bootstrap_by_user():
    rng = np.random.default_rng(0)
    tally = Tally()
    per_user = []
    for u in range(400):
        n = int(rng.integers(1, 40))
        p = rng.beta(2, 6)  # users differ: their impressions are correlated
        y = int(rng.binomial(n, p))
        per_user.append((n, y))
        for _ in range(n):
            tally.add(f"u{u}", IMPRESSIONS)
        for _ in range(y):
            tally.add(f"u{u}", POSITIVE)
    r, var = tally.rate(POSITIVE)
    n_arr, y_arr = np.array(per_user).T
    assert r == pytest.approx(y_arr.sum() / n_arr.sum())
    boot = []
    for _ in range(2000):
        pick = rng.integers(0, len(per_user), len(per_user))
        boot.append(y_arr[pick].sum() / n_arr[pick].sum())
    sd = float(np.std(boot))
    assert np.sqrt(var) == pytest.approx(sd, rel=0.12)
    # the naive per-impression (binomial) interval would be much narrower than the truth here
    assert np.sqrt(r * (1 - r) / n_arr.sum()) < 0.8 * sd


def test_sign_test():
    assert sign_test(0, 0) is None
    assert sign_test(10, 10) == pytest.approx(1.0)
    assert sign_test(30, 10) < 0.01 < sign_test(12, 8)


# ---- through the API, with simulated users -----------------------------------------------------

DEGRADED = {"diversity": 1.0, "category_boost": 0.0, "like_boost": 0.0, "click_boost": 0.0, "explore": False}


@pytest.mark.parametrize("kind", ["split", "interleave"])
def test_a_better_variant_wins_with_the_stated_confidence(api, kind):
    from liverec.evaluation.simulate import SimConfig, run_experiment, synthetic_world

    world = synthetic_world(n_categories=8, per_category=15, n_background=60, seed=4)
    # A's ranking ignores relevance (MMR at full diversity, no feedback boosts); B is the app's own
    variants = [{"name": "A", "ranking": DEGRADED}, {"name": "B"}]
    report = run_experiment(api, world, SimConfig(users=60, steps=8, seed=3), app=f"exp-{kind}", name=kind,
                            variants=variants, kind=kind)
    exp = report["experiment"]
    assert report["requests"] == 60 * 8
    assert report["verdict"] == "B better than A at 95%", exp
    a, b = exp["variants"]
    assert a["impressions"] > 0 and b["impressions"] > 0
    if kind == "split":
        assert 15 <= a["users"] <= 45 and a["users"] + b["users"] == 60  # the hash split the users
        assert b["ctr"]["value"] > a["ctr"]["value"]
        assert exp["comparisons"][0]["ctr"]["low"] > 0
    else:
        duel = exp["interleaving"]
        assert duel["wins"]["B"] > duel["wins"]["A"] and duel["p_value"] < 0.05
        assert duel["slates"] == 60 * 8


def test_experiments_of_one_app_share_its_users_and_serve_every_worker(api):
    shop = api.with_app("shop")
    shop.upsert_items([{"item_id": f"i{k}", "title": f"t{k}", "categories": ["A" if k % 2 else "B"]} for k in range(20)])
    shop.send_events([{"user_id": f"bg{u}", "item_id": f"i{(u + k) % 20}", "type": "view", "timestamp": 100.0 + k}
                      for u in range(10) for k in range(4)])
    first = shop.create_experiment("half", [{"name": "A"}, {"name": "B", "ranking": {"diversity": 0.5}}], traffic=0.5)
    second = shop.create_experiment("rest", [{"name": "C", "share": 0.2}, {"name": "D", "share": 0.8}])
    tags = [shop.recommend(f"u{k}").experiment for k in range(200)]
    ids = [t["id"] for t in tags]
    assert 70 <= ids.count(first.experiment_id) <= 130 and ids.count(first.experiment_id) + ids.count(second.experiment_id) == 200
    assert all(t["variant"] in ("A", "B") for t in tags if t["id"] == first.experiment_id)
    assert [t["variant"] for t in tags] == [shop.recommend(f"u{k}").experiment["variant"] for k in range(200)]  # stable
    assert [e.experiment_id for e in shop.experiments()] == [second.experiment_id, first.experiment_id]  # newest first
    assert shop.stop_experiment(first.experiment_id).status == "stopped"
    assert {shop.recommend(f"u{k}").experiment["id"] for k in range(50)} == {second.experiment_id}
    stopped = shop.experiment(first.experiment_id)
    assert not stopped.running and sum(v["impressions"] for v in stopped.variants) > 0  # its metrics stay readable
    assert api.with_app("news").experiments() == []  # per app
    from liverec.client.errors import InvalidRequest, NotFound

    with pytest.raises(NotFound):
        api.with_app("news").experiment(first.experiment_id)
    with pytest.raises(InvalidRequest) as bad:
        shop.create_experiment("x", [{"name": "A", "model_version": "v000009"}, {"name": "A"}])
    fields = {e.field for e in bad.value.errors}
    assert {"variants[0].model_version", "variants[1].name"} <= fields, fields
    with pytest.raises(InvalidRequest) as bad:
        shop.create_experiment("x", [{"name": "A"}, {"ranking": {"pool": 0}}])
    assert [e.field for e in bad.value.errors] == ["variants.1.ranking.pool"]


def test_the_override_schema_states_the_ranking_configs_own_checks():
    """Every bound the request schema states for a ranking override is one RankingConfig
    enforces (past it the config refuses), so a schema-valid value is one the config takes."""
    from liverec.api.schemas import OVERRIDE_BOUNDS, RankingOverrides
    from liverec.ranking.config import RankingConfig

    for name, bounds in OVERRIDE_BOUNDS.items():
        for kind, edge in bounds.items():
            if name == "explore_draws" and kind == "le":
                continue  # a cap on one request's work, not a rule of the config
            outside = {"gt": edge, "ge": edge - 1, "le": edge + 0.5}[kind]
            with pytest.raises(ValueError):
                RankingConfig(**{name: outside})
            inside = {"gt": edge + 0.5, "ge": edge, "le": edge}[kind]
            RankingConfig(**{name: type(getattr(RankingConfig(), name))(inside)})
    props = RankingOverrides.model_json_schema()["properties"]
    assert "reward_window_s" not in props and props["diversity"]["anyOf"][0] == {"maximum": 1, "minimum": 0, "type": "number"}


def test_workers_over_one_store_serve_and_count_alike_and_a_restart_refolds_the_same(tmp_path):
    """Two services over one store (as two workers): an experiment one creates the other serves
    from its next request; feedback through either counts in both; a restart's rebuild from the
    two logs equals what they folded live; a stop reaches both."""
    from liverec.config import Settings
    from liverec.runtime.compose import build_service

    settings = Settings(data_dir=tmp_path, scorer="cooccurrence", snapshot_interval_s=0)
    one, two = build_service(settings), build_service(settings)
    one.start()
    two.start()
    try:
        one.upsert_items("default", [{"item_id": f"i{k}", "title": f"t{k}", "categories": ["A" if k % 2 else "B"]}
                                     for k in range(30)])
        one.ingest("default", [{"user_id": f"bg{u}", "item_id": f"i{(3 * u + k) % 30}", "type": "view",
                                "timestamp": 100.0 + k} for u in range(20) for k in range(5)])
        exp = one.experiments.create("default", "two", "split", [{"name": "A"}, {"name": "B", "ranking": {"diversity": 0.6}}])
        exp_id = exp["experiment_id"]
        rng = random.Random(0)
        for k in range(40):
            worker = (one, two)[k % 2]
            out = worker.recommend("default", f"u{k % 10}")
            assert out["experiment"]["id"] == exp_id
            item = out["items"][rng.randrange(len(out["items"]))]["item_id"]
            (two, one)[k % 2].ingest("default", [{"user_id": f"u{k % 10}", "item_id": item,
                                                  "type": rng.choice(["click", "like", "skip"])}])
        for w in (one, two):  # a view flushes its own process's queued impressions: both, then compare
            w.experiments.view("default", exp_id)
        views = [w.experiments.view("default", exp_id) for w in (one, two)]
        assert views[0]["variants"] == views[1]["variants"] and sum(v["impressions"] for v in views[0]["variants"]) == 400
        assert sum(v["ctr"]["value"] * v["impressions"] for v in views[0]["variants"]) > 0
        third = build_service(settings)
        third.start()
        try:
            assert third.experiments.view("default", exp_id)["variants"] == views[0]["variants"]
        finally:
            third.close()
        two.experiments.stop_experiment("default", exp_id)
        assert "experiment" not in one.recommend("default", "u1")
        assert one.experiments.view("default", exp_id)["status"] == "stopped"
    finally:
        one.close()
        two.close()


def test_a_variant_scores_with_another_model_version_served_beside_the_promoted_one(tmp_path):
    import torch

    from liverec.config import Settings
    from liverec.model.registry import ModelRegistry
    from liverec.model.service_data import train_from_service
    from liverec.runtime.compose import build_service
    from liverec.runtime.models import ModelServer

    torch.set_num_threads(1)
    recipe = {"d_model": 16, "n_blocks": 1, "epochs": 1, "batch_size": 16, "stride": None, "max_len": 20, "text": False,
              "eval_every": 1}
    settings = Settings(data_dir=tmp_path / "data", experiment_model_versions=1)
    svc = build_service(settings)
    svc.start()
    svc.ingest("shop", [{"user_id": f"u{u}", "item_id": f"i{(u + k) % 15}", "type": "click", "timestamp": 1e6 + 60 * k}
                        for u in range(30) for k in range(8)])
    svc.close()
    reg = ModelRegistry.for_data_dir(settings.data_dir, "shop")
    v1, v2, v3 = (train_from_service(settings.data_dir, "shop", recipe, seed=s, progress=False) for s in range(3))
    reg.promote(v1)
    svc = build_service(settings)
    svc.start()
    try:
        server = svc.component(ModelServer)
        assert server.versioned("shop", v1) is svc.pipeline.scorer.by_app["shop"]  # the promoted one is itself
        exp = svc.experiments.create("shop", "model", "split", [{"name": "A"}, {"name": "B", "model_version": v2}])
        users = {}
        for k in range(30):
            out = svc.recommend("shop", f"u{k}", n=5)
            users.setdefault(out["experiment"]["variant"], f"u{k}")
        assert set(users) == {"A", "B"} and server.versioned("shop", v2).version == v2
        # the B user's slate is the one the pipeline gives with v2's scores, not v1's
        from dataclasses import replace as dc_replace

        from liverec.recommend.pipeline import RecommendRequest

        svc.experiments.stop_experiment("shop", exp["experiment_id"])
        exp = svc.experiments.create("shop", "model", "split", [{"name": "A", "ranking": {"explore": False}},
                                                                 {"name": "B", "model_version": v2,
                                                                  "ranking": {"explore": False}}])
        b_user = next(f"u{k}" for k in range(30) if svc.recommend("shop", f"u{k}")["experiment"]["variant"] == "B")
        served = [(i["item_id"], i["score"]) for i in svc.recommend("shop", b_user, n=5, diversity=0.0)["items"]]
        cfg = dc_replace(svc.ranking.settings.for_app("shop"), explore=False)
        direct = {}
        for version in (v1, v2):
            recs, name = svc.pipeline.recommend(RecommendRequest("shop", b_user, 5, diversity=0.0, config=cfg,
                                                                 model_version=version))
            direct[version] = [(r.item_id, round(r.score, 6)) for r in recs]
        assert served == direct[v2] != direct[v1]
        # bounded: one extra version kept; a third pushes the second out
        assert server.versioned("shop", v3).version == v3
        assert list(server._versions) == [("shop", v3)]
    finally:
        svc.close()
