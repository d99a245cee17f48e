"""Score an analyzer against labelled records (`sentimon eval`).

Records come one JSON object a line, in either format (detected per line):
  sentimon:  {"id", "text", "extractions": [{"entity", "polarity", "category"}, ...]}
  FinEntity: {"id", "text", "entities": [{"entity", "polarity", "label", "start", "end"}, ...]}
FinEntity has no categories, so its records count towards every metric but category accuracy.

Predicted and gold entities match when their names are equal after `normalize_name`, the same
normalisation the entity linker uses ("Apple Inc." == "apple").
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from rich.table import Table

from model.linking import normalize_name
from model.schema import CATEGORIES, POLARITIES

if TYPE_CHECKING:
    from model.analyzer import AnalysisResult

MAX_REPORTED_ERRORS = 20


class DatasetError(ValueError):
    """An evaluation file has lines that cannot be used; the message lists them with line numbers."""


class SupportsAnalyze(Protocol):
    def analyze(self, text: str) -> AnalysisResult: ...


@dataclass(frozen=True)
class GoldEntity:
    entity: str
    polarity: str
    category: str | None  # None for FinEntity records


@dataclass(frozen=True)
class EvalRecord:
    id: str
    text: str
    entities: tuple[GoldEntity, ...]
    has_categories: bool


@dataclass
class EvalReport:
    n_records: int
    repeat: int
    perfect_records: float
    entity_precision: float | None
    entity_recall: float | None
    entity_f1: float | None
    entity_polarity_f1: float | None
    polarity_accuracy: float | None
    category_accuracy: float | None
    valid_json_rate: float
    sec_per_sample: float
    n_gold_entities: int  # summed over all runs, like every count and rate here
    n_predicted_entities: int
    records_varying: float | None  # share of records whose output is not the same in every run
    repeat_disagreement: float | None  # mean over record and run pairs of 1 - Jaccard(outputs)
    entity_polarity_f1_stdev: float | None  # across runs
    polarity_confusion: dict[str, dict[str, int]] = field(default_factory=dict)  # gold -> predicted -> n
    model: str | None = None
    prompt_version: str | None = None

    def to_json(self) -> dict:
        return {key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(self).items()}


@dataclass
class _Tally:
    runs: int = 0
    ok: int = 0
    perfect: int = 0
    gold: int = 0
    predicted: int = 0
    matched: int = 0
    polarity_correct: int = 0
    category_scored: int = 0
    category_correct: int = 0
    seconds: float = 0.0
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, record: EvalRecord, result: AnalysisResult, seconds: float) -> None:
        gold = {normalize_name(entity.entity): entity for entity in record.entities}
        matched: set[str] = set()
        polarity_correct = category_correct = 0
        for predicted in result.entities:
            key = normalize_name(predicted.entity)
            if key not in gold or key in matched:
                continue
            matched.add(key)
            expected = gold[key]
            self.confusion[(expected.polarity, predicted.polarity)] += 1
            polarity_correct += predicted.polarity == expected.polarity
            category_correct += record.has_categories and predicted.category == expected.category
        self.runs += 1
        self.ok += result.ok
        self.gold += len(gold)
        self.predicted += len(result.entities)
        self.matched += len(matched)
        self.polarity_correct += polarity_correct
        self.category_scored += len(matched) if record.has_categories else 0
        self.category_correct += category_correct
        self.seconds += seconds
        everything_right = polarity_correct == len(matched) and (
            not record.has_categories or category_correct == len(matched)
        )
        self.perfect += len(matched) == len(gold) == len(result.entities) and everything_right

    def entity_polarity_f1(self) -> float | None:
        return _ratio(2 * self.polarity_correct, self.predicted + self.gold)


def load_records(path: Path | str) -> list[EvalRecord]:
    """Records of a JSONL file; raises DatasetError listing every unusable line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    records: list[EvalRecord] = []
    errors: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = _parse_record(line)
        except ValueError as exc:
            errors.append(f"{path}:{lineno}: {exc}")
            continue
        if record.id in first_line:
            errors.append(f"{path}:{lineno}: id {record.id!r} already used on line {first_line[record.id]}")
            continue
        first_line[record.id] = lineno
        records.append(record)
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise DatasetError(f"{len(errors)} unusable line(s) in {path}:\n" + "\n".join(shown) + more)
    if not records:
        raise DatasetError(f"{path} holds no records")
    return records


def _parse_record(line: str) -> EvalRecord:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    record_id, text = obj.get("id"), obj.get("text")
    if not isinstance(record_id, str) or not record_id.strip():
        raise ValueError("'id' must be a non-empty string")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"record {record_id}: 'text' must be a non-empty string")
    if "extractions" in obj:
        return EvalRecord(record_id, text, _parse_extractions(record_id, obj["extractions"]), has_categories=True)
    if "entities" in obj:
        return EvalRecord(record_id, text, _parse_finentity(record_id, obj["entities"]), has_categories=False)
    raise ValueError(
        f"record {record_id}: needs 'extractions' (sentimon format) or 'entities' (FinEntity format), "
        f"found keys {sorted(obj)}"
    )


def _parse_labels(record_id: str, items: object, *, with_category: bool) -> list[GoldEntity]:
    if not isinstance(items, list):
        raise ValueError(f"record {record_id}: expected a list of entities, got {type(items).__name__}")
    labels = []
    for index, item in enumerate(items):
        where = f"record {record_id}, entity #{index + 1}"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected an object, got {type(item).__name__}")
        entity, polarity = item.get("entity"), item.get("polarity")
        if not isinstance(entity, str) or not normalize_name(entity):
            raise ValueError(f"{where}: 'entity' must name something, got {entity!r}")
        if polarity not in POLARITIES:
            raise ValueError(f"{where} ({entity}): polarity {polarity!r} is not one of {', '.join(POLARITIES)}")
        category = item.get("category") if with_category else None
        if with_category and category not in CATEGORIES:
            raise ValueError(f"{where} ({entity}): category {category!r} is not one of {', '.join(CATEGORIES)}")
        labels.append(GoldEntity(entity, polarity, category))
    return labels


def _parse_extractions(record_id: str, items: object) -> tuple[GoldEntity, ...]:
    labels = _parse_labels(record_id, items, with_category=True)
    seen: set[str] = set()
    for label in labels:
        key = normalize_name(label.entity)
        if key in seen:
            raise ValueError(f"record {record_id}: entity {label.entity!r} is listed twice")
        seen.add(key)
    return tuple(labels)


def _parse_finentity(record_id: str, items: object) -> tuple[GoldEntity, ...]:
    """FinEntity labels each mention; merge mentions of one entity into one label.

    Mentions that disagree take the non-neutral polarity; '+' and '-' together make '~' (mixed).
    """
    mentions: dict[str, list[GoldEntity]] = {}
    for label in _parse_labels(record_id, items, with_category=False):
        mentions.setdefault(normalize_name(label.entity), []).append(label)
    merged = []
    for labels in mentions.values():
        polar = {label.polarity for label in labels} - {"0"}
        polarity = polar.pop() if len(polar) == 1 else ("~" if polar else "0")
        merged.append(GoldEntity(labels[0].entity, polarity, None))
    return tuple(merged)


def evaluate(
    analyzer: SupportsAnalyze,
    records: Sequence[EvalRecord],
    *,
    repeat: int = 1,
    progress: Callable[[int, int], None] | None = None,
    on_result: Callable[[EvalRecord, AnalysisResult], None] | None = None,
) -> EvalReport:
    """Run `analyzer` over `records` `repeat` times; `progress(done, total)` and `on_result(record, result)` after
    each analysis."""
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    if not records:
        raise ValueError("no records to evaluate")
    total = len(records) * repeat
    overall = _Tally()
    run_f1s: list[float | None] = []
    outputs: list[list[frozenset[tuple[str, str, str]]]] = [[] for _ in records]
    first: AnalysisResult | None = None
    for run in range(repeat):
        tally = _Tally()
        for index, record in enumerate(records):
            started = time.perf_counter()
            result = analyzer.analyze(record.text)
            seconds = time.perf_counter() - started
            first = first or result
            tally.add(record, result, seconds)
            overall.add(record, result, seconds)
            outputs[index].append(
                frozenset((normalize_name(e.entity), e.polarity, e.category) for e in result.entities)
            )
            if on_result:
                on_result(record, result)
            if progress:
                progress(run * len(records) + index + 1, total)
        run_f1s.append(tally.entity_polarity_f1())
    return EvalReport(
        n_records=len(records),
        repeat=repeat,
        perfect_records=overall.perfect / overall.runs,
        entity_precision=_ratio(overall.matched, overall.predicted),
        entity_recall=_ratio(overall.matched, overall.gold),
        entity_f1=_ratio(2 * overall.matched, overall.predicted + overall.gold),
        entity_polarity_f1=overall.entity_polarity_f1(),
        polarity_accuracy=_ratio(overall.polarity_correct, overall.matched),
        category_accuracy=_ratio(overall.category_correct, overall.category_scored),
        valid_json_rate=overall.ok / overall.runs,
        sec_per_sample=overall.seconds / overall.runs,
        n_gold_entities=overall.gold,
        n_predicted_entities=overall.predicted,
        records_varying=_records_varying(outputs) if repeat > 1 else None,
        repeat_disagreement=_mean_disagreement(outputs) if repeat > 1 else None,
        entity_polarity_f1_stdev=_stdev(run_f1s) if repeat > 1 else None,
        polarity_confusion=_nested(overall.confusion),
        model=first.model if first else None,
        prompt_version=first.prompt_version if first else None,
    )


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _records_varying(outputs: list[list[frozenset]]) -> float:
    return sum(len(set(runs)) > 1 for runs in outputs) / len(outputs)


def _mean_disagreement(outputs: list[list[frozenset]]) -> float:
    distances = [
        1 - len(a & b) / len(a | b) if a | b else 0.0
        for runs in outputs
        for a, b in itertools.combinations(runs, 2)
    ]
    return statistics.fmean(distances)


def _stdev(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.pstdev(present) if len(present) > 1 else None


def _nested(confusion: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = {}
    for (gold, predicted), count in sorted(confusion.items()):
        nested.setdefault(gold, {})[predicted] = count
    return nested


def render_table(report: EvalReport) -> Table:
    """The report as a two-column rich table (percentages, '—' where a metric is undefined)."""
    title = f"Evaluation: {report.n_records} records" + (f" x {report.repeat} runs" if report.repeat > 1 else "")
    table = Table(title=title)
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    rows: list[tuple[str, str]] = [
        ("Perfect records", _percent(report.perfect_records)),
        ("Entity precision", _percent(report.entity_precision)),
        ("Entity recall", _percent(report.entity_recall)),
        ("Entity F1", _percent(report.entity_f1)),
        ("Entity+polarity F1", _percent(report.entity_polarity_f1)),
        ("Polarity accuracy (matched)", _percent(report.polarity_accuracy)),
        ("Category accuracy (matched)", _percent(report.category_accuracy)),
        ("Valid JSON", _percent(report.valid_json_rate)),
        ("Seconds per sample", f"{report.sec_per_sample:.3f}"),
        ("Gold / predicted entities", f"{report.n_gold_entities} / {report.n_predicted_entities}"),
    ]
    if report.repeat > 1:
        rows += [
            ("Records varying across runs", _percent(report.records_varying)),
            ("Mean pairwise disagreement", _percent(report.repeat_disagreement)),
            ("Entity+polarity F1 std across runs", _percent(report.entity_polarity_f1_stdev)),
        ]
    if report.model:
        rows.append(("Model / prompt", f"{report.model} / {report.prompt_version}"))
    for label, value in rows:
        table.add_row(label, value)
    return table


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"
