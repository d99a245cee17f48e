"""The default adapter shipped in model/adapters/: its record, and `sentimon eval` with it against the base model."""

import json
import logging
from pathlib import Path

import pytest
import tomli_w
from typer.testing import CliRunner

from bench import quality
from model.embedded import resolve_model_path, sha256_file
from model.prompt import PROMPT_VERSION, TUNED_PROMPT_VERSION
from model.settings import ModelSettings
from monitor.analysis import build_analyzer
from monitor.cli import app
from monitor.config import load_config
from training.dataset import DataSources
from training.registry import BUNDLED_ADAPTER, AdapterRegistry, registry_for

DEV_SET = Path(__file__).parents[1] / "datasets" / "dev.jsonl"
runner = CliRunner(env={"COLUMNS": "250"})


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "sentimon.toml"
    path.write_text(tomli_w.dumps({"database": str(tmp_path / "s.duckdb")}), encoding="utf-8")
    return path


def eval_json(config_file: Path, data: Path, adapter: str, *more: str) -> dict:
    done = runner.invoke(app, ["eval", "--data", str(data), "--config", str(config_file), "--format", "json",
                               "--adapter", adapter, *more], catch_exceptions=False)  # fmt: skip
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def test_the_bundled_adapter_is_in_use_and_recorded(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "adapters")  # a fresh registry: no version trained yet
    assert registry.current_label() == "bundled" and registry.current().path == BUNDLED_ADAPTER
    assert BUNDLED_ADAPTER.stat().st_size <= 20 * 2**20
    manifest = registry.bundled_manifest()
    assert manifest.base_model_sha256 == sha256_file(resolve_model_path(ModelSettings()))
    assert manifest.steps_done == manifest.total_steps and manifest.decision == "promoted"
    assert manifest.metrics["n_records"] == 240 and manifest.metrics["valid_json_rate"] == 1.0
    assert manifest.finentity_metrics["n_records"] > 100


def test_starting_on_the_bundled_adapter_evaluates_only_its_own_prompt_head(config_file: Path) -> None:
    analyzer = build_analyzer(load_config(config_file))
    backend = analyzer.backend
    assert backend.adapter == str(BUNDLED_ADAPTER)
    assert backend._prompt_tokens_evaluated() < 10  # loading and switching to the adapter evaluated no head yet
    result = analyzer.analyze("Nvidia shares rise 4% after quarterly revenue tops estimates")
    assert result.ok and result.attempts == 1
    assert backend._prompt_tokens_evaluated() == result.prompt_tokens  # the tuned head and the article, once each


def test_a_damaged_registry_starts_the_base_model_and_says_why(config_file: Path, caplog) -> None:
    config = load_config(config_file)
    pointer = registry_for(config).pointer
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text("latest", encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger="monitor.analysis"):
        analyzer = build_analyzer(config)
    assert analyzer.backend.adapter is None
    assert "starting on the base model: cannot load the adapter registry's current adapter" in caplog.text
    assert "holds 'latest', not a version label" in caplog.text


def test_an_article_naming_many_companies_comes_back_whole(config_file: Path) -> None:
    """A results calendar of 17 Milan listings (FinEntity): its list runs past 256 tokens, where the default output
    budget used to cut it off and leave the article with no valid analysis at all."""
    finentity = DataSources.in_folder(None).finentity.read_text(encoding="utf-8").splitlines()
    record = max((json.loads(line) for line in finentity), key=lambda r: len(r["entities"]))
    assert record["text"].startswith("Board meetings on Q3 results") and len(record["entities"]) == 17
    result = build_analyzer(load_config(config_file)).analyze(record["text"])
    assert result.ok and result.attempts == 1, result.error
    assert result.completion_tokens > 256 and len(result.entities) >= 12


def test_analyze_prints_each_entity_linked_and_scored_as_json(config_file: Path) -> None:
    text = "Apple shares shot up thanks to iPhone sales, while Intel slumped after a weak forecast."
    done = runner.invoke(app, ["analyze", "--text", text, "--config", str(config_file), "--format", "json"])
    result = json.loads(done.stdout)
    said = {e["ticker"]: (e["polarity"], e["score"]) for e in result["entities"] if e["ticker"]}
    assert result["ok"] and result["adapter"] == str(BUNDLED_ADAPTER), done.output
    assert said["AAPL"][0] == "+" and said["AAPL"][1] > 0.5 and said["INTC"][0] == "-" and said["INTC"][1] < -0.5


def test_eval_scores_the_bundled_adapter_above_the_base_model(config_file: Path, tmp_path: Path) -> None:
    records = DEV_SET.read_text(encoding="utf-8").splitlines()[:8]
    data = tmp_path / "dev8.jsonl"
    data.write_text("\n".join(records) + "\n", encoding="utf-8")
    tuned = eval_json(config_file, data, "current", "--predictions", str(tmp_path / "said.jsonl"))
    base = eval_json(config_file, data, "base")
    assert tuned["adapter"] == str(BUNDLED_ADAPTER) and base["adapter"] is None
    assert tuned["n_records"] == base["n_records"] == 8
    assert tuned["entity_polarity_f1"] > base["entity_polarity_f1"]
    assert tuned["entity_f1"] > base["entity_f1"]
    said = [json.loads(line) for line in (tmp_path / "said.jsonl").read_text(encoding="utf-8").splitlines()]
    wanted = [json.loads(line) for line in records]
    assert [(s["id"], s["text"], s["gold"]) for s in said] == [(r["id"], r["text"], r["extractions"]) for r in wanted]
    predicted = sum(len(s["predicted"]) for s in said)
    assert predicted == tuned["n_predicted_entities"] and all(s["ok"] for s in said)


def test_eval_names_an_unknown_adapter(config_file: Path) -> None:
    done = runner.invoke(app, ["eval", "--data", str(DEV_SET), "--config", str(config_file), "--adapter", "v007"])
    assert done.exit_code != 0
    assert "--adapter v007: adapter v007 has no file" in done.output


def test_quality_benchmark_reports_both_models_against_the_targets(tmp_path: Path, capsys) -> None:
    out = tmp_path / "quality.json"
    assert quality.main(["--sets", "dev", "--limit", "2", "--json", str(out), "--markdown"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| metric | dev, base | dev, adapter | target |")
    assert "| entity_f1 |" in table and "dev > 95.0%" in table and "2 dev records" in table
    reports = json.loads(out.read_text())["dev"]
    assert reports["base"]["n_records"] == reports["adapter"]["n_records"] == 2
    assert (reports["base"]["prompt_version"], reports["adapter"]["prompt_version"]) == (PROMPT_VERSION,
                                                                                       TUNED_PROMPT_VERSION)
