import json
import math
import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from liverec.config import Settings

SAMPLE = Path(__file__).resolve().parents[1] / "liverec.env.example"


def test_sample_env_file_parses_into_settings(monkeypatch):
    names = []
    for line in SAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            monkeypatch.setenv(key, value)
            names.append(key)
    settings = Settings()
    assert {n.removeprefix("LIVEREC_").lower() for n in names} <= set(Settings.model_fields)
    assert settings.max_batch == 10000 and settings.type_weights == {"view": 1.0, "skip": -1.0}


def test_weight_overrides_change_polarity():
    types = Settings(type_weights={"view": -0.5}).types()
    assert types["view"].polarity == "negative" and types["view"].weight == -0.5


def test_bad_settings_are_named():
    with pytest.raises(ValidationError, match="teleport"):
        Settings(type_weights={"teleport": 1.0})
    with pytest.raises(ValidationError, match="scorer"):
        Settings(scorer="magic")


# ---- liverec.env.example lists every setting --------------------------------------------------

VARIABLE = re.compile(r"^(#\s*)?(LIVEREC_[A-Z0-9_]+)=(.*)$")


def sample_blocks() -> list[list[str]]:
    """The sample's lines in blank-line separated blocks."""
    blocks: list[list[str]] = [[]]
    for line in SAMPLE.read_text().splitlines():
        if line.strip():
            blocks[-1].append(line.strip())
        elif blocks[-1]:
            blocks.append([])
    return [b for b in blocks if b]


def sample_variables() -> dict[str, str | None]:
    """Every LIVEREC_* variable the sample lists: its value, ``None`` where only shown commented."""
    out: dict[str, str | None] = {}
    for block in sample_blocks():
        for line in block:
            m = VARIABLE.match(line)
            if m:
                commented, name, value = m.groups()
                out[name] = out.get(name) if commented else value
    return out


@pytest.fixture
def clean_env(monkeypatch):
    """No LIVEREC_* variable from the surroundings."""
    for name in [n for n in os.environ if n.startswith("LIVEREC_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_the_sample_lists_every_setting_and_nothing_else():
    listed = set(sample_variables())
    fields = {Settings.env_var(name) for name in Settings.model_fields}
    assert sorted(fields - listed) == [], "settings missing from liverec.env.example"
    assert sorted(listed - fields) == [], "liverec.env.example lists variables that are no settings"


def test_every_sample_variable_is_described():
    for block in sample_blocks():
        names = [m.group(2) for m in map(VARIABLE.match, block) if m]
        described = any(line.startswith("#") and not VARIABLE.match(line) for line in block)
        assert not names or described, f"no comment describes {names}"


def test_the_sample_values_validate_and_are_the_defaults(clean_env):
    for name, value in sample_variables().items():
        if value is not None:
            clean_env.setenv(name, value)
    loaded, default = Settings(), Settings.model_construct()
    assert loaded.model_dump(exclude={"type_weights"}) == default.model_dump(exclude={"type_weights"})
    assert loaded.types() == default.types()  # the sample's weights are the default ones, spelled out


def test_learner_and_ranking_settings_from_the_environment(clean_env):
    clean_env.setenv("LIVEREC_LEARNER", "shop, news,")
    clean_env.setenv("LIVEREC_LEARNER_INTERVAL", "2.5")
    clean_env.setenv("LIVEREC_LEARNER_BIAS_LR", "0.03")
    clean_env.setenv("LIVEREC_RANKING_CONFIG", "/etc/liverec/ranking.json")
    clean_env.setenv("LIVEREC_WORKERS", "4")
    clean_env.setenv("LIVEREC_SNAPSHOT_INTERVAL_S", "0")
    s = Settings()
    assert s.learner == ["shop", "news"] and s.learner_interval == 2.5 and s.learner_bias_lr == 0.03
    assert s.ranking_config == Path("/etc/liverec/ranking.json") and s.workers == 4 and s.snapshot_interval_s == 0
    # an empty variable is an unset one
    clean_env.setenv("LIVEREC_LEARNER", "")
    clean_env.setenv("LIVEREC_RANKING_CONFIG", "")
    s = Settings()
    assert s.learner == [] and s.ranking_config is None


@pytest.mark.parametrize("field, value", [
    ("learner_bias_lr", -0.1), ("learner_bias_lr", math.nan), ("learner_interval", 0), ("workers", 0),
    ("snapshot_interval_s", -1), ("port", 0),
])
def test_out_of_range_settings_are_named(field, value):
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_learner_defaults_are_the_learners_own():
    from liverec.learning.online import LearnerConfig

    cfg, defaults = LearnerConfig(), Settings.model_construct()
    assert (defaults.learner_interval, defaults.learner_bias_lr) == (cfg.interval_s, cfg.bias_lr)


def test_ranking_settings_come_from_the_named_file(clean_env, tmp_path):
    from liverec.ranking import RankingSettings, load_settings, read_settings

    path = tmp_path / "ranking.json"
    path.write_text(json.dumps({"default": {"half_life_s": 3600}}))
    assert read_settings(path).for_app("any").half_life_s == 3600
    assert read_settings(None) == RankingSettings()
    clean_env.setenv("LIVEREC_RANKING_CONFIG", str(path))
    assert load_settings().for_app("any").half_life_s == 3600
    with pytest.raises(ValueError, match="LIVEREC_RANKING_CONFIG"):
        read_settings(tmp_path / "missing.json")
