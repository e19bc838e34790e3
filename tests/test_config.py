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
