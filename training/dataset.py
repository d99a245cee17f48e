"""The LoRA training set: reviewed extractions, the team-written records, and the FinEntity training fold.

Sources, in order of precedence when the same text (normalized) occurs in more than one:
  1. reviewed extractions from the database (`sentimon review`): the newest human decision on real articles;
  2. datasets/train/team.jsonl, written by the team;
  3. datasets/finentity/train.jsonl, less a held-out fold.

FinEntity has entities and polarities but no categories. Its records are kept for what they do teach: every
mention gets the placeholder category "Business" in the completion, and the characters of that value are excluded
from the loss (`TrainingExample.exclude_spans`), so the model reads a well-formed answer but is neither rewarded
nor penalized for the category. FinEntity also labels sectors ("materials", "healthcare"), which sentimon's
labelling guide does not list: mentions whose name has no capital letter are left out.

FinEntity evaluation: one fixed fold of about 20% of its records, picked by a seeded hash of each record's id (so it
stays the same when records are added or reordered), is held out of training and scored after it. Training uses
fold 0; `python -m bench.finentity_cv` trains with each of the five folds held out in turn (cross-validation).

The development set is never trained on: a record whose normalized text equals, contains or is contained in a
development text is dropped from every source, and so is one that overlaps the FinEntity held-out fold.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from model.evaluate import EvalRecord, load_records
from model.prompt import ChatTemplate, format_training_example
from model.schema import MAX_MENTIONS, EntityMention
from storage.reviews import ReviewedExample
from training.packing import TrainingExample, value_spans

DATASETS = Path(__file__).parent / "datasets"  # a link to the repository's datasets/, packaged with training
PLACEHOLDER_CATEGORY = "Business"  # stands in for FinEntity's missing categories; kept out of the loss
MIN_OVERLAP_CHARS = 30  # a shorter normalized text inside another is a coincidence ("apple shares rose")
LeftOut = str  # why a record can't be trained on, counted in TrainingSet.dropped
_NOT_WORD = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class DataSources:
    team: Path = DATASETS / "train" / "team.jsonl"
    finentity: Path = DATASETS / "finentity" / "train.jsonl"
    dev: Path = DATASETS / "dev.jsonl"
    holdout_fraction: float = 0.2
    holdout_fold: int = 0  # which holdout_fraction-wide slice of the id-hash range is held out
    holdout_seed: str = "sentimon-finentity-1"

    @classmethod
    def in_folder(cls, root: Path | None) -> DataSources:
        """The files of a datasets folder laid out like the bundled one (None: the bundled one)."""
        root = DATASETS if root is None else Path(root)
        return cls(root / "train" / "team.jsonl", root / "finentity" / "train.jsonl", root / "dev.jsonl")


@dataclass(frozen=True)
class SourceRecord:
    id: str
    source: str  # "review", "team" or "finentity"
    text: str
    mentions: tuple[EntityMention, ...]
    categories_known: bool


@dataclass(frozen=True)
class TrainingSet:
    examples: tuple[TrainingExample, ...]
    records: tuple[SourceRecord, ...]  # the record behind each example
    finentity_holdout: tuple[EvalRecord, ...]
    dropped: dict[str, int]  # why records were left out -> how many
    review_watermark: int  # id of the newest review in the set (0: none)
    data_hash: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_hash", hashlib.sha256(self.jsonl().encode("utf-8")).hexdigest())

    def counts(self) -> dict[str, int]:
        return dict(Counter(record.source for record in self.records))

    def jsonl(self) -> str:
        """The examples as `python -m training.lora --examples` reads them; `data_hash` is this text's sha256."""
        return "".join(
            json.dumps({"prompt": e.prompt, "completion": e.completion,
                        "exclude_spans": [list(span) for span in e.exclude_spans]}, ensure_ascii=False, sort_keys=True)
            + "\n"
            for e in self.examples
        )  # fmt: skip

    def write_jsonl(self, path: Path) -> Path:
        path.write_text(self.jsonl(), encoding="utf-8")
        return path


def assemble(
    *,
    count_tokens: Callable[[str], int],
    reviewed: Sequence[ReviewedExample] = (),
    sources: DataSources = DataSources(),
    template: ChatTemplate | None = None,
    max_input_tokens: int = 384,
) -> TrainingSet:
    """Every usable record as a (prompt, completion) example built exactly as inference builds its prompt
    (`count_tokens` is the model's tokenizer, `max_input_tokens` its article budget). Raises DatasetError
    (model.evaluate) naming the file and lines when a source file is unusable."""
    finentity, held_out = split_finentity(sources)
    forbidden = {"dev_overlap": [normalize_text(r.text) for r in load_records(sources.dev)],
                 "holdout_overlap": [normalize_text(r.text) for r in held_out]}  # fmt: skip
    candidates = [
        *(_from_review(example) for example in reviewed),
        *(_from_eval_record(record, "team") for record in load_records(sources.team)),
        *(_from_eval_record(record, "finentity") for record in finentity),
    ]
    dropped: Counter[str] = Counter()
    seen: set[str] = set()
    kept: list[SourceRecord] = []
    for record in candidates:
        if isinstance(record, LeftOut):
            dropped[record] += 1
            continue
        key = normalize_text(record.text)
        reason = next((name for name, texts in forbidden.items() if overlaps(key, texts)), None)
        if reason is None and key in seen:
            reason = "duplicate"
        if reason:
            dropped[reason] += 1
            continue
        seen.add(key)
        kept.append(record)
    examples = tuple(_example(r, count_tokens, template, max_input_tokens) for r in kept)
    watermark = max((example.review_id for example in reviewed), default=0)
    return TrainingSet(examples, tuple(kept), held_out, dict(dropped), watermark)


def split_finentity(sources: DataSources) -> tuple[list[EvalRecord], tuple[EvalRecord, ...]]:
    """FinEntity's records to train on, and its held-out fold."""
    train: list[EvalRecord] = []
    held_out: list[EvalRecord] = []
    for record in load_records(sources.finentity):
        (held_out if in_holdout(record.id, sources) else train).append(record)
    return train, tuple(held_out)


def in_holdout(record_id: str, sources: DataSources) -> bool:
    digest = hashlib.sha256(f"{sources.holdout_seed}:{record_id}".encode()).digest()
    start = sources.holdout_fold * sources.holdout_fraction * 2**64
    return start <= int.from_bytes(digest[:8], "big") < start + sources.holdout_fraction * 2**64


def normalize_text(text: str) -> str:
    """Case, accents' composed forms, punctuation and spacing folded away: what makes two texts 'the same'."""
    return " ".join(_NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def overlaps(key: str, texts: Iterable[str]) -> bool:
    return any(
        key == text or (min(len(key), len(text)) >= MIN_OVERLAP_CHARS and (key in text or text in key))
        for text in texts
    )


def _from_review(example: ReviewedExample) -> SourceRecord | LeftOut:
    try:
        mentions = tuple(EntityMention.model_validate(item) for item in example.extractions)
    except ValidationError:
        return "unusable"
    return _bounded(SourceRecord(example.record_id, "review", example.text, mentions, categories_known=True))


def _from_eval_record(record: EvalRecord, source: str) -> SourceRecord | LeftOut:
    entities = record.entities
    if not record.has_categories:  # FinEntity: in text order, sectors left out
        named = (e for e in entities if any(c.isupper() for c in e.entity))
        entities = tuple(sorted(named, key=lambda e: record.text.find(e.entity)))
    try:
        mentions = tuple(
            EntityMention(entity=e.entity, polarity=e.polarity, category=e.category or PLACEHOLDER_CATEGORY)
            for e in entities
        )
    except ValidationError:
        return "unusable"
    return _bounded(SourceRecord(record.id, source, record.text, mentions, record.has_categories))


def _bounded(record: SourceRecord) -> SourceRecord | LeftOut:
    """Longer lists than the output schema allows would teach the model to break it."""
    return record if len(record.mentions) <= MAX_MENTIONS else "too_many_mentions"


def _example(
    record: SourceRecord, count_tokens: Callable[[str], int], template: ChatTemplate | None, max_input_tokens: int
) -> TrainingExample:
    prompt, completion = format_training_example(
        record.text, list(record.mentions), tokenizer_count=count_tokens, max_tokens=max_input_tokens,
        template=template,
    )  # fmt: skip
    unknown_categories = () if record.categories_known else value_spans(completion, ("category",))
    return TrainingExample(prompt, completion, unknown_categories)
