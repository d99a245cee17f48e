"""The adapter registry on disk: versions with real manifests, the promotion rule, promote / reject / rollback,
the atomic `current` pointer, and the `sentimon adapters` commands."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
import tomli_w
from typer.testing import CliRunner

from model.analyzer import AnalysisResult
from monitor.cli import app
from storage import reviews, writes
from storage.db import Database
from training.registry import (
    ADAPTER_FILE, MANIFEST_FILE, AdapterRegistry, Manifest, RegistryError, beats,
)  # fmt: skip

runner = CliRunner(env={"COLUMNS": "250"})


def metrics(entity_f1: float | None, valid_json_rate: float = 1.0) -> dict:
    return {"entity_f1": entity_f1, "entity_polarity_f1": entity_f1, "valid_json_rate": valid_json_rate}


def add_version(registry: AdapterRegistry, entity_f1: float, *, reviews_through: int = 0, adapter: bool = True) -> str:
    """A trained version as the refresh job leaves it before the decision: adapter file and manifest."""
    label = registry.reserve()
    if adapter:
        (registry.root / label / ADAPTER_FILE).write_bytes(b"GGUF adapter of " + label.encode())
    registry.save(Manifest(
        version=label, created_at=datetime.now(UTC), data_hash="ab" * 32, base_model="base.gguf",
        base_model_sha256="cd" * 32, train_settings={"rank": 4}, examples={"team": 10, "review": 2},
        reviews_through=reviews_through, steps_done=5, total_steps=5, metrics=metrics(entity_f1),
        baseline={"version": "base", "metrics": metrics(0.4)},
    ))  # fmt: skip
    return label


def in_production(database: Database, adapter: str, decisions: list[str]) -> None:
    """Analyses run with `adapter`, one more than `decisions`, and a reviewer's decision on each of the others."""
    result = AnalysisResult([], True, None, "[]", "embedded:test", adapter, "1", 1.0, 1, 1, 1)
    with database.write() as conn:
        for index in range(len(decisions) + 1):
            analysis_id = writes.store_analysis(conn, index + 1, 1, result, datetime.now(UTC))
            if index < len(decisions):
                reviews.store_review(conn, reviews.Review(f"news-{index}", "text", [], decisions[index], "t",
                                                          index + 1, analysis_id), datetime.now(UTC))  # fmt: skip


@pytest.fixture
def registry(tmp_path: Path) -> AdapterRegistry:
    return AdapterRegistry(tmp_path / "adapters", bundled=tmp_path / "no-bundled.gguf")


def test_without_versions_the_bundled_adapter_or_the_base_model_is_in_use(tmp_path: Path) -> None:
    bundled = tmp_path / "default.gguf"
    registry = AdapterRegistry(tmp_path / "adapters", bundled=bundled)
    assert registry.current_label() == "base" and registry.current() is None and registry.versions() == []
    bundled.write_bytes(b"GGUF")
    assert registry.current_label() == "bundled" and registry.current().path == bundled
    assert registry.bundled_manifest() is None
    bundled.with_suffix(".json").write_text('{"version": "bundled"')
    with pytest.raises(RegistryError, match="default.json is damaged"):
        registry.bundled_manifest()


@pytest.mark.parametrize(
    ("candidate", "baseline", "wins"),
    [
        (metrics(0.62, 1.0), metrics(0.60, 1.0), True),
        (metrics(0.62, 0.98), metrics(0.60, 1.0), False),  # better F1 but more broken JSON
        (metrics(0.60, 1.0), metrics(0.60, 0.9), False),  # a tie in F1 is not a win
        (metrics(0.10, 1.0), metrics(None, 1.0), True),  # the baseline found nothing
        (metrics(None, 1.0), metrics(None, 1.0), False),
    ],
)
def test_promotion_rule(candidate: dict, baseline: dict, wins: bool) -> None:
    assert beats(candidate, baseline) is wins


def test_promote_reject_and_roll_back(registry: AdapterRegistry) -> None:
    v1, v2, v3 = (add_version(registry, f1, reviews_through=n) for f1, n in ((0.5, 10), (0.6, 25), (0.55, 30)))
    assert (v1, v2, v3) == ("v001", "v002", "v003")
    assert registry.reviews_through() == 30

    registry.promote(v1, "beat base")
    stamp = registry.pointer_stamp()
    registry.promote(v2, "beat v001")
    assert registry.pointer_stamp() != stamp, "the daemon sees every switch"
    registry.reject(v3, "does not beat v002")
    assert registry.current_label() == v2 and registry.current().path == registry.root / v2 / ADAPTER_FILE
    first, second, third = registry.versions()
    assert (first.decision, first.previous, first.retired_at is not None) == ("promoted", "base", True)
    assert (second.decision, second.previous, second.retired_at) == ("promoted", v1, None)
    assert (third.decision, third.reason) == ("rejected", "does not beat v002")

    assert registry.rollback() == v1
    assert registry.manifest(v2).retired_at is not None and registry.manifest(v1).retired_at is None
    assert registry.rollback() == "base" and registry.current() is None
    with pytest.raises(RegistryError, match="there is no earlier one"):
        registry.rollback()
    assert registry.rollback(v3) == v3, "a version can be put in use by name, even a rejected one"
    assert registry.rollback() == "base", "and rolling back returns to what was in use before it"


def test_rollback_refuses_what_cannot_run(registry: AdapterRegistry) -> None:
    v1 = add_version(registry, 0.5)
    broken = add_version(registry, 0.6, adapter=False)
    registry.promote(v1, "beat base")
    for label, problem in (("v009", "no version v009"), (broken, "has no file"), (v1, "already in use"),
                           ("bundled", "adapter bundled has no file"), ("latest", "not a version label")):  # fmt: skip
        with pytest.raises(RegistryError, match=problem):
            registry.rollback(label)
    assert registry.current_label() == v1


def test_rollback_to_base_on_a_fresh_install(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "sentimon-adapters", bundled=tmp_path / "default.gguf")
    (tmp_path / "default.gguf").write_bytes(b"GGUF")
    assert not registry.root.exists() and registry.rollback("base") == "base"
    assert registry.current_label() == "base"


def test_damaged_files_are_named(registry: AdapterRegistry) -> None:
    label = add_version(registry, 0.5)
    (registry.root / label / MANIFEST_FILE).write_text('{"version": "v001"')
    with pytest.raises(RegistryError, match=f"{label}/manifest.json is damaged"):
        registry.versions()
    registry.pointer.write_text("latest\n")
    with pytest.raises(RegistryError, match="holds 'latest', not a version label"):
        registry.current()


def test_reserved_labels_never_collide(registry: AdapterRegistry) -> None:
    registry.root.mkdir(parents=True)
    (registry.root / "v002").mkdir()  # another training reserved it a moment ago
    assert [registry.reserve() for _ in range(2)] == ["v003", "v004"]


def test_adapters_commands(tmp_path: Path) -> None:
    config = tmp_path / "sentimon.toml"
    config.write_text(tomli_w.dumps({"database": str(tmp_path / "s.duckdb"),
                                     "training": {"adapters_dir": str(tmp_path / "adapters")}}))  # fmt: skip
    fresh = runner.invoke(app, ["adapters", "list", "--config", str(config)])
    assert fresh.exit_code == 0 and "in use: bundled" in fresh.output  # the shipped adapter, model/adapters/
    shipped = next(line.split("│") for line in fresh.output.splitlines() if "│ bundled" in line)
    recorded = AdapterRegistry(tmp_path / "adapters").bundled_manifest().metrics
    assert "in use" in shipped[2] and shipped[5].strip() == f"{recorded['entity_f1']:.1%}"
    registry = AdapterRegistry(tmp_path / "adapters")
    registry.promote(add_version(registry, 0.5), "beat base")
    registry.promote(add_version(registry, 0.625), "beat v001")
    in_production(Database(tmp_path / "s.duckdb"), str(registry.root / "v002" / ADAPTER_FILE), ["accepted", "corrected"])

    listed = runner.invoke(app, ["adapters", "list", "--config", str(config)])
    assert listed.exit_code == 0, listed.output
    rows = {line.split("│")[1].strip(): line.split("│") for line in listed.output.splitlines() if "│ " in line}
    assert "shipped" in rows["bundled"][2] and "retired" in rows["v001"][2]
    assert "in use" in rows["v002"][2] and "62.5%" in rows["v002"][5]
    assert [cell.strip() for cell in rows["v002"][-3:-1]] == ["3", "50.0%"], "3 analyses, 1 of 2 reviewed kept"
    assert [cell.strip() for cell in rows["v001"][-3:-1]] == ["", ""]
    assert "in use: v002" in listed.output

    back = runner.invoke(app, ["adapters", "rollback", "--config", str(config)])
    assert back.exit_code == 0 and "now in use: v001" in back.output
    wrong = runner.invoke(app, ["adapters", "rollback", "v007", "--config", str(config)])
    assert wrong.exit_code == 2 and "no version v007" in wrong.output
