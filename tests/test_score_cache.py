"""Remembered development-set scores are keyed by everything that decides them, and only by that."""

import shutil

from model.evaluate import load_records
from model.settings import ModelSettings
from training.dataset import DataSources
from training.registry import BUNDLED_ADAPTER
from training.score_cache import cached_scores, score_key


def test_the_key_changes_with_adapter_base_records_and_settings_but_not_the_adapter_path(tmp_path):
    records = load_records(DataSources.in_folder(None).dev)[:3]
    settings = ModelSettings()
    key = score_key(BUNDLED_ADAPTER, "base-sha", records, settings)
    moved = shutil.copy(BUNDLED_ADAPTER, tmp_path / "same.gguf")
    assert score_key(moved, "base-sha", records, settings.model_copy(update={"adapter": str(moved)})) == key
    changed = bytearray(BUNDLED_ADAPTER.read_bytes())
    changed[-1] ^= 1
    (tmp_path / "other.gguf").write_bytes(changed)
    others = [
        score_key(tmp_path / "other.gguf", "base-sha", records, settings),
        score_key(None, "base-sha", records, settings),
        score_key(BUNDLED_ADAPTER, "other-base", records, settings),
        score_key(BUNDLED_ADAPTER, "base-sha", records[:2], settings),
        score_key(BUNDLED_ADAPTER, "base-sha", records, settings.model_copy(update={"max_input_tokens": 200})),
    ]
    assert len({key, *others}) == 1 + len(others)


def test_scores_are_computed_once_and_a_damaged_entry_is_scored_again(tmp_path):
    calls = []

    def score():
        calls.append(1)
        return {"entity_f1": 0.5}

    assert cached_scores(tmp_path, "k", "scoring", score) == {"entity_f1": 0.5}
    assert cached_scores(tmp_path, "k", "scoring", score) == {"entity_f1": 0.5} and len(calls) == 1
    (tmp_path / "scores" / "k.json").write_text("{trunc")
    assert cached_scores(tmp_path, "k", "scoring", score) == {"entity_f1": 0.5} and len(calls) == 2
