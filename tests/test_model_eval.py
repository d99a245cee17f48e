"""The evaluation harness (model/evaluate.py) and the shipped evaluation data (datasets/)."""

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from model.analyzer import AnalysisResult, Analyzer, EntitySentiment
from model.evaluate import DatasetError, EvalRecord, GoldEntity, evaluate, load_records, render_table
from model.schema import CATEGORIES, POLARITIES
from model.settings import ModelSettings

DATASETS = Path(__file__).parent.parent / "datasets"
DEV_SET = DATASETS / "dev.jsonl"
FINENTITY = DATASETS / "finentity" / "train.jsonl"
REPORT_KEYS = {
    "perfect_records", "entity_precision", "entity_recall", "entity_f1", "polarity_accuracy",
    "category_accuracy", "valid_json_rate", "sec_per_sample", "entity_polarity_f1", "n_records", "repeat",
    "records_varying", "repeat_disagreement",
}  # fmt: skip

Mention = tuple[str, str, str]  # entity, polarity, category


def result(*mentions: Mention, ok: bool = True) -> AnalysisResult:
    return AnalysisResult(
        entities=[EntitySentiment(e, p, c, ticker=None, score=0.0, confidence=1.0) for e, p, c in mentions],
        ok=ok,
        error=None if ok else "invalid JSON",
        raw_output="",
        model="scripted",
        adapter=None,
        prompt_version="test",
        latency_ms=0.0,
        attempts=1,
        prompt_tokens=0,
        completion_tokens=0,
    )


class ScriptedAnalyzer:
    """Answers each text with its scripted results in turn (the n-th call for a text gets the n-th answer)."""

    def __init__(self, answers: dict[str, list[AnalysisResult]]) -> None:
        self._answers = {text: iter(results) for text, results in answers.items()}

    def analyze(self, text: str) -> AnalysisResult:
        return next(self._answers[text])


def record(text: str, *gold: tuple[str, str, str | None], categories: bool = True) -> EvalRecord:
    return EvalRecord(text, text, tuple(GoldEntity(*g) for g in gold), has_categories=categories)


def write_lines(path: Path, *objects: object) -> Path:
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objects) + "\n", encoding="utf-8")
    return path


# --- load_records


def test_loads_both_formats_line_by_line(tmp_path: Path) -> None:
    data = write_lines(
        tmp_path / "mixed.jsonl",
        {"id": "a", "text": "Apple rose.", "extractions": [{"entity": "Apple", "polarity": "+", "category": "Performance"}]},
        "",
        {"id": "b", "text": "Shell fell; BP rose.", "entities": [
            {"entity": "Shell", "polarity": "-", "label": "Negative", "start": 0, "end": 5},
            {"entity": "BP", "polarity": "+", "label": "Positive", "start": 12, "end": 14}]},
    )  # fmt: skip
    first, second = load_records(data)
    assert first == EvalRecord("a", "Apple rose.", (GoldEntity("Apple", "+", "Performance"),), has_categories=True)
    assert second.has_categories is False
    assert second.entities == (GoldEntity("Shell", "-", None), GoldEntity("BP", "+", None))


@pytest.mark.parametrize(
    ("polarities", "merged"),
    [(["0", "+"], "+"), (["-", "0", "-"], "-"), (["+", "-"], "~"), (["0", "0"], "0")],
)
def test_finentity_mentions_of_one_entity_merge(tmp_path: Path, polarities: list[str], merged: str) -> None:
    mentions = [{"entity": name, "polarity": p} for name, p in zip(["Shell", "shell", "Shell plc"], polarities)]
    data = write_lines(tmp_path / "fe.jsonl", {"id": "x", "text": "Shell ...", "entities": mentions})
    (only,) = load_records(data)
    assert only.entities == (GoldEntity("Shell", merged, None),)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "text": "t", "extractions": [}', r"bad\.jsonl:1: invalid JSON \(.* at column \d+\)"),
        ("[1, 2]", r"bad\.jsonl:1: expected a JSON object, got list"),
        ('{"text": "t", "extractions": []}', r"bad\.jsonl:1: 'id' must be a non-empty string"),
        ('{"id": "a", "text": "  ", "extractions": []}', r"record a: 'text' must be a non-empty string"),
        ('{"id": "a", "text": "t", "labels": []}', r"record a: needs 'extractions' .* found keys \['id', 'labels', 'text'\]"),
        ('{"id": "a", "text": "t", "extractions": {}}', r"record a: expected a list of entities, got dict"),
        ('{"id": "a", "text": "t", "extractions": ["Apple"]}', r"record a, entity #1: expected an object, got str"),
        ('{"id": "a", "text": "t", "extractions": [{"entity": " ", "polarity": "+", "category": "Legal"}]}',
         r"record a, entity #1: 'entity' must name something"),
        ('{"id": "a", "text": "t", "extractions": [{"entity": "X", "polarity": "positive", "category": "Legal"}]}',
         r"record a, entity #1 \(X\): polarity 'positive' is not one of \+, -, 0, ~"),
        ('{"id": "a", "text": "t", "extractions": [{"entity": "X", "polarity": "+", "category": "Sports"}]}',
         r"record a, entity #1 \(X\): category 'Sports' is not one of Legal"),
        ('{"id": "a", "text": "t", "extractions": [{"entity": "X", "polarity": "+"}]}',
         r"category None is not one of"),
        ('{"id": "a", "text": "t", "extractions": [{"entity": "Apple", "polarity": "+", "category": "Legal"}, '
         '{"entity": "Apple Inc.", "polarity": "-", "category": "Legal"}]}', r"record a: entity 'Apple Inc\.' is listed twice"),
        ('{"id": "a", "text": "t", "entities": [{"entity": "X", "polarity": "bad"}]}', r"polarity 'bad' is not one of"),
    ],
)  # fmt: skip
def test_bad_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_records(write_lines(tmp_path / "bad.jsonl", line))


def test_every_bad_line_is_reported_together(tmp_path: Path) -> None:
    good = {"id": "a", "text": "t", "extractions": []}
    data = write_lines(tmp_path / "d.jsonl", good, "not json", good, {"id": "b", "text": "t"})
    with pytest.raises(DatasetError) as caught:
        load_records(data)
    message = str(caught.value)
    assert message.startswith("3 unusable line(s)")
    assert "d.jsonl:2: invalid JSON" in message
    assert "d.jsonl:3: id 'a' already used on line 1" in message
    assert "d.jsonl:4: record b: needs 'extractions'" in message


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="holds no records"):
        load_records(write_lines(tmp_path / "empty.jsonl", ""))
    with pytest.raises(DatasetError, match="cannot read .*missing.jsonl"):
        load_records(tmp_path / "missing.jsonl")


# --- evaluate: metric arithmetic on scripted answers


@pytest.fixture
def scored_records() -> list[EvalRecord]:
    return [
        record("r1", ("Apple", "+", "Performance"), ("Samsung", "-", "Performance")),
        record("r2", ("Tesla", "~", "Business")),
        record("r3", ("Shell", "+", None), ("BP", "0", None), categories=False),
        record("r4", ("Ford", "-", "Recruitment")),
        record("r5"),
        record("r6", ("Nvidia", "+", None), categories=False),
    ]


@pytest.fixture
def scored_answers() -> dict[str, list[AnalysisResult]]:
    return {
        "r1": [result(("Apple Inc.", "+", "Performance"), ("SAMSUNG", "+", "Performance"))],  # polarity wrong
        "r2": [result(("Tesla", "~", "Performance"), ("Rivian", "-", "Business"))],  # category wrong, one extra
        "r3": [result(("Shell", "+", "NewsRelease"))],  # BP missed; no categories to score
        "r4": [result(ok=False)],  # unparseable output
        "r5": [result()],  # nothing to find, nothing found: perfect
        "r6": [result(("Nvidia", "+", "Legal"))],  # perfect: FinEntity has no categories
    }


def test_metrics(scored_records: list[EvalRecord], scored_answers: dict[str, list[AnalysisResult]]) -> None:
    report = evaluate(ScriptedAnalyzer(scored_answers), scored_records)
    # 7 gold, 6 predicted, 5 matched by name, 4 of those with the right polarity, 2 of 3 categories right.
    assert report.n_records == 6
    assert (report.n_gold_entities, report.n_predicted_entities) == (7, 6)
    assert report.entity_precision == pytest.approx(5 / 6)
    assert report.entity_recall == pytest.approx(5 / 7)
    assert report.entity_f1 == pytest.approx(10 / 13)
    assert report.entity_polarity_f1 == pytest.approx(8 / 13)
    assert report.polarity_accuracy == pytest.approx(4 / 5)
    assert report.category_accuracy == pytest.approx(2 / 3)
    assert report.perfect_records == pytest.approx(2 / 6)
    assert report.valid_json_rate == pytest.approx(5 / 6)
    assert report.polarity_confusion == {"+": {"+": 3}, "-": {"+": 1}, "~": {"~": 1}}
    assert report.sec_per_sample >= 0
    assert (report.records_varying, report.repeat_disagreement, report.entity_polarity_f1_stdev) == (None, None, None)
    assert (report.model, report.prompt_version) == ("scripted", "test")


def test_repeat_measures_disagreement() -> None:
    records = [record("r1", ("Apple", "+", "Performance")), record("r2", ("Tesla", "-", "Business"))]
    answers = {
        "r1": [result(("Apple", "+", "Performance")), result(("Apple", "-", "Performance"))],
        "r2": [result(("Tesla", "-", "Business")), result(("Tesla", "-", "Business"))],
    }
    seen: list[tuple[int, int]] = []
    report = evaluate(ScriptedAnalyzer(answers), records, repeat=2, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert report.repeat == 2
    assert report.records_varying == pytest.approx(0.5)  # r1 changed between runs, r2 did not
    assert report.repeat_disagreement == pytest.approx(0.5)  # r1: disjoint outputs (1.0), r2: identical (0.0)
    assert report.entity_polarity_f1 == pytest.approx(0.75)  # run 1: 1.0, run 2: 0.5, pooled
    assert report.entity_polarity_f1_stdev == pytest.approx(0.25)
    assert report.n_gold_entities == 4  # counted over both runs


def test_undefined_rates_are_none_not_zero() -> None:
    report = evaluate(ScriptedAnalyzer({"r1": [result()]}), [record("r1", ("Apple", "+", None), categories=False)])
    assert report.entity_precision is None  # nothing predicted
    assert report.entity_recall == 0.0
    assert report.entity_f1 == 0.0
    assert report.polarity_accuracy is None  # nothing matched
    assert report.category_accuracy is None  # FinEntity only
    assert "—" in _rendered(render_table(report))


def test_bad_arguments() -> None:
    analyzer = ScriptedAnalyzer({"r1": [result()]})
    with pytest.raises(ValueError, match="repeat must be at least 1, got 0"):
        evaluate(analyzer, [record("r1")], repeat=0)
    with pytest.raises(ValueError, match="no records"):
        evaluate(analyzer, [])


def test_json_and_table(scored_records: list[EvalRecord], scored_answers: dict[str, list[AnalysisResult]]) -> None:
    report = evaluate(ScriptedAnalyzer(scored_answers), scored_records)
    as_json = report.to_json()
    assert REPORT_KEYS <= as_json.keys()
    assert json.loads(json.dumps(as_json)) == as_json
    assert as_json["entity_f1"] == round(10 / 13, 4)
    for key in ("perfect_records", "entity_precision", "entity_recall", "entity_f1", "valid_json_rate"):
        assert 0 <= as_json[key] <= 1
    text = _rendered(render_table(report))
    assert re.search(r"Entity F1\s+│\s+76\.9%", text)
    assert re.search(r"Category accuracy \(matched\)\s+│\s+66\.7%", text)
    assert "across runs" not in text  # repeat rows only with --repeat


def _rendered(table: object) -> str:
    console = Console(record=True, width=100, color_system=None)
    console.print(table)
    return console.export_text()


# --- the shipped data


@pytest.fixture(scope="module")
def dev_records() -> list[EvalRecord]:
    return load_records(DEV_SET)


def _dev_lines() -> Iterator[dict]:
    return (json.loads(line) for line in DEV_SET.read_text(encoding="utf-8").splitlines())


def test_dev_set_shape(dev_records: list[EvalRecord]) -> None:
    assert len(dev_records) >= 220
    assert [r.id for r in dev_records] == [f"dev-{n:04d}" for n in range(1, len(dev_records) + 1)]
    entities = [e for r in dev_records for e in r.entities]
    assert {e.polarity for e in entities} == set(POLARITIES)
    assert {e.category for e in entities} == set(CATEGORIES)
    assert sum(e.polarity == "~" for e in entities) >= 20
    assert sum(len(r.entities) >= 2 for r in dev_records) >= len(dev_records) * 0.4
    assert sum(len({e.polarity for e in r.entities}) > 1 for r in dev_records) >= len(dev_records) * 0.3


def test_dev_entities_are_verbatim_and_in_order() -> None:
    for line in _dev_lines():
        offsets = [line["text"].find(e["entity"]) for e in line["extractions"]]
        assert -1 not in offsets, f"{line['id']}: an entity is not written as in the text"
        assert offsets == sorted(offsets), f"{line['id']}: entities not in order of first appearance"


def test_dev_set_shares_no_text_with_finentity(dev_records: list[EvalRecord]) -> None:
    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z0-9]+", text.lower()))

    finentity = [words(r.text) for r in load_records(FINENTITY)]
    for dev in dev_records:
        mine = words(dev.text)
        overlap = max(len(mine & theirs) / len(mine | theirs) for theirs in finentity)
        assert overlap < 0.6, f"{dev.id} is close to a FinEntity text"


def test_finentity_copy_loads() -> None:
    records = load_records(FINENTITY)
    assert len(records) == 703
    assert not any(r.has_categories for r in records)
    assert (DATASETS / "finentity" / "README.md").read_text(encoding="utf-8").count("ODC-BY") >= 2


def test_readme_counts_are_current(dev_records: list[EvalRecord]) -> None:
    spec = importlib.util.spec_from_file_location("dataset_stats", DATASETS / "dataset_stats.py")
    assert spec and spec.loader
    stats = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stats)
    readme = (DATASETS / "README.md").read_text(encoding="utf-8")
    assert stats.readme_with_stats(readme, stats.render_stats(dev_records)) == readme, (
        "run python datasets/dataset_stats.py"
    )
    with pytest.raises(ValueError, match="lacks the"):
        stats.readme_with_stats("no markers here", "x")


# --- the real embedded model


@pytest.fixture(scope="module")
def embedded_analyzer() -> Analyzer:
    return Analyzer.from_settings(ModelSettings())


def test_real_analyzer_on_three_dev_records(embedded_analyzer: Analyzer, dev_records: list[EvalRecord]) -> None:
    shortest = sorted(dev_records, key=lambda r: len(r.text))[:3]  # headlines: the quickest to analyze
    report = evaluate(embedded_analyzer, shortest)
    assert report.n_records == 3
    assert report.valid_json_rate == 1.0  # grammar-constrained decoding always yields valid JSON
    assert report.n_predicted_entities >= 1
    assert report.model and report.prompt_version
    assert 0 <= report.entity_f1 <= 1
