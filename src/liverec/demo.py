"""A generated demo catalog and simulated users (public datasets may not be redistributed).

Items belong to one of a dozen categories, each with its own vocabulary, creators and series, so
titles and descriptions read sensibly and text vectors cluster by topic. Simulated users have two
favourite categories and a favourite creator; they mostly browse those, follow series in order,
like and buy what they love, and skip or dislike what they do not: consistent enough that
recommendations visibly make sense (a sci-fi fan gets sci-fi).

:func:`prepare_demo` is what ``liverec demo`` runs before serving: on first start it writes the
catalog and events, trains a small Transformer on them with the same code as ``liverec train``
and promotes it; later starts find the promoted version and reuse it.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

from .config import Settings
from .events import Event
from .store.base import Item, Store

CATEGORIES: dict[str, dict[str, list[str]]] = {
    "Sci-Fi": {
        "adj": ["Quantum", "Orbital", "Stellar", "Synthetic", "Galactic", "Neon", "Cryogenic", "Exo"],
        "noun": ["Frontier", "Colony", "Signal", "Drift", "Horizon", "Protocol", "Nebula", "Station"],
        "words": ["starships", "distant planets", "artificial minds", "time dilation", "first contact"],
    },
    "Cooking": {
        "adj": ["Rustic", "Quick", "Smoky", "Golden", "Spiced", "Slow-Cooked", "Seasonal", "Crispy"],
        "noun": ["Kitchen", "Suppers", "Bread", "Noodles", "Grill", "Pantry", "Desserts", "Stews"],
        "words": ["family recipes", "fresh herbs", "weeknight dinners", "baking", "street food"],
    },
    "Jazz": {
        "adj": ["Blue", "Late-Night", "Smoky", "Modal", "Cool", "Swinging", "Velvet", "Midnight"],
        "noun": ["Sessions", "Standards", "Quartet", "Ballads", "Improvisations", "Trio", "Club", "Suite"],
        "words": ["saxophone solos", "upright bass", "brushed drums", "bebop", "smoky clubs"],
    },
    "Hiking": {
        "adj": ["Alpine", "Hidden", "Coastal", "Wild", "Misty", "High", "Forest", "Desert"],
        "noun": ["Trails", "Summits", "Ridges", "Valleys", "Passes", "Lakes", "Canyons", "Peaks"],
        "words": ["mountain trails", "camping gear", "national parks", "backpacking", "wildflowers"],
    },
    "History": {
        "adj": ["Ancient", "Forgotten", "Imperial", "Medieval", "Revolutionary", "Lost", "Royal", "Bronze-Age"],
        "noun": ["Empires", "Dynasties", "Battles", "Chronicles", "Kingdoms", "Voyages", "Ruins", "Archives"],
        "words": ["ancient empires", "archaeology", "old manuscripts", "great battles", "royal courts"],
    },
    "Comedy": {
        "adj": ["Awkward", "Silly", "Absurd", "Hilarious", "Deadpan", "Wacky", "Cheeky", "Goofy"],
        "noun": ["Roommates", "Office", "Wedding", "Road Trip", "Neighbours", "Reunion", "Holiday", "Family"],
        "words": ["stand-up", "sitcom laughs", "slapstick", "witty banter", "improv"],
    },
    "Fitness": {
        "adj": ["Power", "Core", "Daily", "Intense", "Gentle", "Morning", "Total", "Express"],
        "noun": ["Workout", "Yoga", "Cardio", "Strength", "Stretch", "Pilates", "Circuit", "Run"],
        "words": ["home workouts", "yoga flows", "strength training", "running plans", "mobility"],
    },
    "Mystery": {
        "adj": ["Silent", "Crimson", "Locked-Room", "Hollow", "Shadowed", "Cold", "Secret", "Final"],
        "noun": ["Case", "Witness", "Alibi", "Inheritance", "Clue", "Detective", "Confession", "Manor"],
        "words": ["detectives", "whodunits", "hidden clues", "crime scenes", "twists"],
    },
    "Gardening": {
        "adj": ["Urban", "Cottage", "Organic", "Balcony", "Herb", "Native", "Shade", "Edible"],
        "noun": ["Garden", "Beds", "Roses", "Seedlings", "Compost", "Orchard", "Greenhouse", "Borders"],
        "words": ["vegetable beds", "pruning", "composting", "flower borders", "seed saving"],
    },
    "Tech": {
        "adj": ["Practical", "Modern", "Distributed", "Secure", "Fast", "Functional", "Cloud", "Open"],
        "noun": ["Python", "Databases", "Networks", "Compilers", "Systems", "APIs", "Kernels", "Gadgets"],
        "words": ["programming", "software design", "gadgets", "open source", "machine learning"],
    },
    "Travel": {
        "adj": ["Grand", "Slow", "Island", "Budget", "Rail", "Coastal", "Nordic", "Tropical"],
        "noun": ["Journeys", "Cities", "Escapes", "Markets", "Routes", "Harbours", "Villages", "Getaways"],
        "words": ["city breaks", "rail journeys", "local markets", "island hopping", "travel tips"],
    },
    "Kids": {
        "adj": ["Happy", "Tiny", "Brave", "Sleepy", "Curious", "Jolly", "Little", "Magic"],
        "noun": ["Dragons", "Bears", "Robots", "Pirates", "Bunnies", "Dinosaurs", "Fairies", "Trains"],
        "words": ["bedtime stories", "cartoons", "picture books", "nursery songs", "adventures"],
    },
}

FIRST = ["Ada", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Max", "Nia", "Oto", "Pia"]
LAST = ["Moreau", "Okafor", "Lind", "Sato", "Reyes", "Novak", "Haddad", "Kowal", "Brandt", "Silva", "Tanaka", "Quinn"]


@dataclass(frozen=True)
class DemoConfig:
    items: int = 3000
    users: int = 400
    events_per_user: tuple[int, int] = (25, 70)
    days: float = 30.0
    seed: int = 7
    app: str = "default"


def generate_items(cfg: DemoConfig) -> list[Item]:
    """Items with titles, descriptions, one category (plus a format) and a creator."""
    rng = random.Random(cfg.seed)
    names = list(CATEGORIES)
    creators = {c: [f"{rng.choice(FIRST)} {rng.choice(LAST)}" for _ in range(6)] for c in names}
    items: list[Item] = []
    formats = ["Video", "Article", "Podcast", "Book"]
    for k in range(cfg.items):
        category = names[k % len(names)]
        vocab = CATEGORIES[category]
        adj, noun = rng.choice(vocab["adj"]), rng.choice(vocab["noun"])
        series_no = (k // len(names)) % 4 + 1
        creator = rng.choice(creators[category])
        fmt = rng.choice(formats)
        about = rng.sample(vocab["words"], 2)
        title = f"{adj} {noun} {series_no}" if rng.random() < 0.5 else f"The {adj} {noun}"
        text = (f"A {fmt.lower()} about {about[0]} and {about[1]} by {creator}. "
                f"{category} fans will recognise the {adj.lower()} {noun.lower()} theme.")
        items.append(Item(cfg.app, f"item-{k:05d}", title, text, (category, fmt), {"creator": creator, "format": fmt}))
    return items


def generate_events(cfg: DemoConfig, items: list[Item], now: float | None = None) -> list[Event]:
    """Simulated users' behaviour, in time order."""
    rng = random.Random(cfg.seed + 1)
    now = time.time() if now is None else now
    by_category: dict[str, list[Item]] = {}
    for item in items:
        by_category.setdefault(item.categories[0], []).append(item)
    names = list(by_category)
    events: list[Event] = []
    for u in range(cfg.users):
        user = f"user-{u:04d}"
        favourites = rng.sample(names, 2)
        disliked = rng.choice([c for c in names if c not in favourites])
        # Each category's items are browsed in a per-user but category-consistent order, so
        # sequences carry a pattern (what follows what) as well as a taste.
        t = now - cfg.days * 86400 * rng.uniform(0.3, 1.0)
        seen: set[str] = set()
        for _ in range(rng.randint(*cfg.events_per_user)):
            t += rng.expovariate(1 / 3600.0)
            roll = rng.random()
            category = favourites[0] if roll < 0.55 else favourites[1] if roll < 0.85 else rng.choice(names)
            pool = by_category[category]
            item = pool[min(int(rng.expovariate(1 / 40.0)), len(pool) - 1)] if rng.random() < 0.7 else rng.choice(pool)
            if item.item_id in seen:
                continue
            seen.add(item.item_id)
            if category == disliked:
                kind = rng.choice(["skip", "skip", "dislike"])
            elif category in favourites:
                kind = rng.choices(["view", "click", "like", "purchase"], weights=[5, 3, 2, 1])[0]
            else:
                kind = rng.choices(["view", "skip"], weights=[2, 1])[0]
            events.append(Event(cfg.app, f"demo-{u}-{len(events)}", user, kind, min(t, now), item_id=item.item_id))
    events.sort(key=lambda e: e.timestamp)
    return events


def load_demo(store: Store, cfg: DemoConfig | None = None) -> dict[str, int]:
    """Write the demo catalog and events into ``store`` (idempotent: ids are fixed)."""
    cfg = cfg or DemoConfig()
    items = generate_items(cfg)
    store.catalog.upsert(items)
    events = generate_events(cfg, items)
    result = store.events.append(events)
    return {"items": len(items), "events": len(result.accepted), "duplicates": result.duplicates}


#: Seconds between the demo's online-learner updates: short, so the events a visitor sends reach the
#: served model while they watch (an update also waits for enough new events to learn from).
DEMO_LEARNER_INTERVAL_S = 10.0


def enable_demo_learner(app: str, interval_s: float = DEMO_LEARNER_INTERVAL_S) -> dict[str, str]:
    """Ask for the in-process online learner of ``app`` through its environment variables.

    Settings and the service read ``LIVEREC_LEARNER`` / ``LIVEREC_LEARNER_INTERVAL`` when they
    are built, so call this before building them. Values already in the environment win
    (``LIVEREC_LEARNER=`` keeps the demo without a learner). Returns the values in effect.
    """
    os.environ.setdefault("LIVEREC_LEARNER", app)
    os.environ.setdefault("LIVEREC_LEARNER_INTERVAL", f"{interval_s:g}")
    return {k: os.environ[k] for k in ("LIVEREC_LEARNER", "LIVEREC_LEARNER_INTERVAL")}


#: The demo's model: small enough to train within a minute on two CPU cores (early stopping usually
#: ends it well before ``epochs``; ``time_budget_s`` bounds it on a slow or busy machine), with item
#: text vectors so items nobody has touched yet are scorable too.
DEMO_RECIPE: dict[str, Any] = {
    "d_model": 64, "n_blocks": 2, "n_heads": 1, "dropout": 0.3, "max_len": 50, "stride": None,
    "batch_size": 32, "lr": 2e-3, "schedule": "cosine", "warmup_steps": 50, "epochs": 40,
    "eval_every": 2, "patience": 5, "time_budget_s": 90.0, "text": True,
}


@dataclass(frozen=True)
class DemoSetup:
    """What :func:`prepare_demo` found or did."""

    app: str
    generated: dict[str, int] | None  # counts written now; None when the store already held events
    version: str  # the promoted model version of the demo app
    trained: bool  # True when ``version`` was trained by this call
    manifest: dict[str, Any]  # the version's manifest (validation metrics, training time, ...)


def prepare_demo(
    settings: Settings,
    cfg: DemoConfig | None = None,
    recipe: dict[str, Any] | None = None,
    say: Callable[[str], None] | None = None,
    progress: bool = True,
) -> DemoSetup:
    """Make ``settings.data_dir`` ready for the demo: data, then a promoted Transformer.

    The catalog and simulated users are written when the store has no events; a model is
    trained (``recipe``: overrides of :data:`DEMO_RECIPE`) and promoted when the demo app has no
    promoted version, so only the first start pays for training.
    """
    from .model.registry import ModelRegistry
    from .model.service_data import train_from_service
    from .store import open_store

    cfg = cfg or DemoConfig()
    say = say or (lambda s: None)
    store = open_store(settings.store_url_resolved())
    try:
        generated = None
        if store.events.count() == 0:
            say("generating the demo catalog and simulated users ...")
            generated = load_demo(store, cfg)
            say(f"demo data: {generated['items']} items, {generated['events']} events")
    finally:
        store.close()  # training reads the store through its own connection

    registry = ModelRegistry.for_data_dir(settings.data_dir, cfg.app)
    version = registry.promoted()
    trained = version is None
    if version is None:
        plan = {**DEMO_RECIPE, **(recipe or {})}
        say(f"training the demo's Transformer (at most {plan['epochs']} epochs"
            + (f" or {plan['time_budget_s']:.0f} s" if plan.get("time_budget_s") else "")
            + "; first start only) ...")
        version = train_from_service(settings.data_dir, cfg.app, plan, seed=cfg.seed, progress=progress)
        registry.promote(version)
    manifest = registry.manifest(version)
    if trained:
        ndcg = manifest.get("validation", {}).get("NDCG@10", float("nan"))
        say(f"model {version} promoted: validation NDCG@10 {ndcg:.4f}, "
            f"trained in {manifest.get('train_seconds', float('nan')):.0f} s")
    return DemoSetup(cfg.app, generated, version, trained, manifest)
