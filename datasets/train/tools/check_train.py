"""Validate the team-written training set and print its statistics.

    python datasets/train/tools/check_train.py [--data FILE] [--against FILE ...] [--drop-overlaps] [--loose]

Checks every record (schema, entities occur verbatim in the text, in order of first
appearance, no repeats), looks for exact and near-duplicate texts inside the set and
against the reference sets (the development set and the FinEntity copy by default),
and prints counts per polarity, category and form. Exits 1 when anything is wrong.
--drop-overlaps rewrites --data without the records that overlap a reference set.
--loose also lists, for a person to read, records that may retell a reference record's
event in other words (shared content words or entities); they do not fail the check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from rapidfuzz import fuzz, process

from model.linking import normalize_name
from model.schema import CATEGORIES, MAX_MENTIONS, POLARITIES, EntityMention

DATASETS = Path(__file__).resolve().parents[2]
DEFAULT_DATA = DATASETS / "train" / "team.jsonl"
DEFAULT_REFERENCES = [DATASETS / "dev.jsonl", DATASETS / "finentity" / "train.jsonl"]

RECORD_KEYS = {"id", "text", "extractions"}
ID_PATTERN = re.compile(r"team-\d{5}")

# Two texts are near-duplicates when their word sets overlap this much (Jaccard) or
# their normalized strings are this similar (rapidfuzz ratio, 0-100).
NEAR_JACCARD = 0.9
NEAR_RATIO = 90
# A word-set Jaccard of 0.9 implies a ratio of the sorted-word strings well above this, so pairs below it
# are not compared word by word.
JACCARD_PREFILTER = 70
# A loose match may retell the same event in other words: this share of the shorter text's content words
# occur in the other, or the two records list this many entities in common. Reading the pairs is the check.
LOOSE_WORD_SHARE = 0.45
LOOSE_SHARED_ENTITIES = 2
STOP_WORDS = frozenset(
    "the a an and or of to in on for with its it as at by from that this is was were be will would said says after "
    "over into than more most but while has have had their his her about up down new".split()
)

# "NEW YORK, March 3 (Reuters) - ...", "CUPERTINO, Calif. - ...", "(Reuters) - ..."
WIRE_DATELINE = re.compile(
    r"^(?:[A-Z]{2,}[A-Z .']*(?:, [A-Z][a-z]+\.)?(?:,? [A-Z][a-z]{2,8}\.? \d{1,2})?"
    r"(?: \((?:Reuters|AP|AFP|Bloomberg)\))?|\((?:Reuters|AP|AFP|Bloomberg)\)) [-–—] "
)
ANALYST_ACTION = re.compile(
    r"upgrade|downgrade|price target|coverage|\btarget to\b|\b(?:out|under)perform\b|\b(?:over|under)weight\b", re.I
)
# "U.S. Steel", "8:30 a.m. Eastern" or "Alphabet Inc. said" must not end a sentence.
ABBREVIATIONS = re.compile(
    r"(?:\b[A-Za-z]\.(?:[A-Za-z]\.)+|\b(?:Inc|Corp|Co|Ltd|Mr|Ms|Dr|St|ST|No|vs|Jan|Feb|Aug|Sept|Oct|Nov|Dec))\.?$"
)
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass(frozen=True)
class Overlap:
    record_id: str
    other_id: str
    kind: str  # "exact" or "near"


def entity_position(entity: str, text: str) -> int:
    """Index of the first whole-word occurrence of entity in text, or -1."""
    match = re.search(r"(?<!\w)" + re.escape(entity) + r"(?!\w)", text)
    return match.start() if match else -1


def record_errors(record: object) -> list[str]:
    """Everything wrong with one parsed line; an empty list when it is valid."""
    if not isinstance(record, dict) or set(record) != RECORD_KEYS:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        return [f"expected exactly the keys {sorted(RECORD_KEYS)}, got {keys}"]
    errors = []
    if not isinstance(record["id"], str) or not ID_PATTERN.fullmatch(record["id"]):
        errors.append(f"id {record['id']!r} is not like 'team-00001'")
    text = record["text"]
    if not isinstance(text, str) or not text.strip() or text != text.strip() or "\n" in text:
        return errors + ["text must be a non-empty single line without surrounding spaces"]
    extractions = record["extractions"]
    if not isinstance(extractions, list):
        return errors + ["extractions must be a list (empty when no company is named)"]
    if len(extractions) > MAX_MENTIONS:
        errors.append(f"{len(extractions)} extractions, more than the model's limit of {MAX_MENTIONS}")
    positions = []
    for n, extraction in enumerate(extractions):
        try:
            entity = EntityMention.model_validate(extraction).entity
        except ValidationError as exc:
            reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'item'}: {e['msg']}" for e in exc.errors())
            errors.append(f"extraction {n}: {reasons}")
            continue
        position = entity_position(entity, text)
        if position < 0:
            errors.append(f"extraction {n}: entity {entity!r} does not occur verbatim in the text")
        positions.append(position)
    names = entity_names(record)
    if len(set(names)) != len(names):
        errors.append("an entity is listed twice (names equal after normalize_name)")
    if positions != sorted(positions):
        errors.append("extractions are not in order of first appearance in the text")
    return errors


def entity_names(record: dict) -> list[str]:
    """The record's entity names after normalize_name, in order (the evaluator matches names that way)."""
    mentions = record.get("extractions")
    if not isinstance(mentions, list):
        return []
    return [normalize_name(m["entity"]) for m in mentions if isinstance(m, dict) and isinstance(m.get("entity"), str)]


def load_jsonl(path: Path) -> tuple[list[dict], list[str]]:
    """Parsed lines of path, and 'line N: reason' for each line that is not a JSON object."""
    records, errors = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            errors.append(f"line {number}: not JSON ({exc.msg})")
    return records, errors


def normalized(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _similarity(texts: list[str], others: list[str], cutoff: int) -> np.ndarray:
    """rapidfuzz ratio (0-100) of every pair; scores below cutoff read 0."""
    return process.cdist(texts, others, scorer=fuzz.ratio, score_cutoff=cutoff, dtype=np.uint8, workers=-1)


def _sorted_words(texts: list[str]) -> list[str]:
    return [" ".join(sorted(text.split())) for text in texts]


def find_overlaps(records: list[dict], others: list[dict]) -> list[Overlap]:
    """Records whose text equals or nearly equals a text in others (a record is not compared with itself).

    rapidfuzz scores all pairs at once; the word-set Jaccard, slower in Python, runs only on pairs whose
    sorted-word strings are similar enough to make a high overlap possible.
    """
    texts = [normalized(r["text"]) for r in records]
    other_texts = [normalized(o["text"]) if isinstance(o.get("text"), str) else "" for o in others]
    plain = _similarity(texts, other_texts, NEAR_RATIO)
    reordered = _similarity(_sorted_words(texts), _sorted_words(other_texts), JACCARD_PREFILTER)
    overlaps = []
    for i, record in enumerate(records):
        for j in np.flatnonzero((plain[i] >= NEAR_RATIO) | (reordered[i] >= JACCARD_PREFILTER)):
            other_id = others[j].get("id", f"line {j + 1}")
            if other_id == record["id"]:
                continue
            if texts[i] == other_texts[j]:
                overlaps.append(Overlap(record["id"], other_id, "exact"))
                break
            words, other_words = set(texts[i].split()), set(other_texts[j].split())
            if plain[i, j] >= NEAR_RATIO or jaccard(words, other_words) >= NEAR_JACCARD:
                overlaps.append(Overlap(record["id"], other_id, "near"))
                break
    return overlaps


@dataclass(frozen=True)
class LooseMatch:
    record_id: str
    other_id: str
    word_share: float
    shared_entities: tuple[str, ...]


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9&']+", text.lower()) if len(w) > 2 and w not in STOP_WORDS}


def loose_matches(records: list[dict], others: list[dict]) -> list[LooseMatch]:
    """For each record, the reference record it comes closest to retelling, when it passes either threshold
    (a record is not compared with itself)."""
    references = [(o, content_words(o.get("text") or ""), set(entity_names(o))) for o in others]
    matches = []
    for record in records:
        words, names = content_words(record["text"]), set(entity_names(record))
        best: LooseMatch | None = None
        for other, other_words, other_names in references:
            if other.get("id") == record["id"]:
                continue
            share = len(words & other_words) / max(1, min(len(words), len(other_words)))
            shared = names & other_names
            if share < LOOSE_WORD_SHARE and len(shared) < LOOSE_SHARED_ENTITIES:
                continue
            if best is None or (share, len(shared)) > (best.word_share, len(best.shared_entities)):
                best = LooseMatch(record["id"], other.get("id", "?"), share, tuple(sorted(shared)))
        if best is not None:
            matches.append(best)
    return matches


def sentence_count(text: str) -> int:
    """Sentences in text; a stop after an abbreviation or initials does not end one."""
    count = 1
    pieces = SENTENCE_BREAK.split(text)
    for before in pieces[:-1]:
        if not ABBREVIATIONS.search(before):
            count += 1
    return count


def form_of(text: str) -> str:
    """headline (no final stop), one-sentence lede, or lead of 2-4 / 5+ sentences."""
    sentences = sentence_count(text)
    if sentences == 1:
        return "headline" if text[-1] not in ".!?\"'" else "one-sentence lede"
    return "lead, 2-4 sentences" if sentences <= 4 else "lead, 5+ sentences"


def table(title: str, counts: Counter, total: int, order: tuple[str, ...] | None = None) -> str:
    keys = order or tuple(k for k, _ in counts.most_common())
    rows = [f"{title:<24}{'count':>7}{'share':>9}"]
    rows += [f"  {key:<22}{counts[key]:>7}{counts[key] / total:>9.1%}" for key in keys]
    return "\n".join(rows)


def statistics(records: list[dict]) -> str:
    extractions = [e for r in records for e in r["extractions"]]
    forms = Counter(form_of(r["text"]) for r in records)
    sizes = Counter(min(len(r["extractions"]), 4) for r in records)
    flags = Counter()
    for r in records:
        polarities = {e["polarity"] for e in r["extractions"]}
        flags["wire dateline"] += bool(WIRE_DATELINE.match(r["text"]))
        flags["analyst actions"] += bool(ANALYST_ACTION.search(r["text"]))
        flags["with figures"] += bool(re.search(r"\d", r["text"]))
        flags["mixed polarities"] += len(polarities) > 1
    record_categories = Counter(c for r in records for c in {e["category"] for e in r["extractions"]})
    entities = Counter(e["entity"] for e in extractions)
    return "\n\n".join([
        f"records {len(records)}, extractions {len(extractions)}, distinct entity strings {len(entities)}, "
        f"mean {len(extractions) / len(records):.2f} entities/record, "
        f"mean {sum(len(r['text'].split()) for r in records) / len(records):.1f} words/record",
        table("polarity (extractions)", Counter(e["polarity"] for e in extractions), len(extractions), POLARITIES),
        table("category (extractions)", Counter(e["category"] for e in extractions), len(extractions), CATEGORIES),
        table("category (records with)", record_categories, len(records), CATEGORIES),
        table("form (records)", forms, len(records),
              ("headline", "one-sentence lede", "lead, 2-4 sentences", "lead, 5+ sentences")),
        table("entities per record", Counter({f"{k}{'+' if k == 4 else ''}": v for k, v in sizes.items()}),
              len(records), ("0", "1", "2", "3", "4+")),
        table("records that are", flags, len(records),
              ("wire dateline", "analyst actions", "with figures", "mixed polarities")),
        "most frequent entities: " + ", ".join(f"{name} {n}" for name, n in entities.most_common(15)),
    ])


def print_loose_matches(records: list[dict], others: list[dict], reference: Path) -> None:
    texts = {r["id"]: r["text"] for r in records}
    reference_texts = {o.get("id", "?"): o.get("text", "") for o in others}
    found = loose_matches(records, others)
    print(f"loose matches with {reference.parent.name}/{reference.name}, to read: {len(found)}")
    for match in found:
        entities = f", entities in common: {', '.join(match.shared_entities)}" if match.shared_entities else ""
        print(f"  {match.record_id} ~ {match.other_id}: {match.word_share:.0%} of content words{entities}")
        print(f"    {texts[match.record_id][:150]}\n    {reference_texts[match.other_id][:150]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--against", type=Path, nargs="*", default=DEFAULT_REFERENCES,
                        help="reference sets the data must not overlap (missing files are reported and skipped)")
    parser.add_argument("--drop-overlaps", action="store_true",
                        help="rewrite --data without the records that overlap a reference set")
    parser.add_argument("--loose", action="store_true",
                        help="also list records that may retell a reference record's event, to read (not an error)")
    args = parser.parse_args(argv)

    try:
        records, problems = load_jsonl(args.data)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"cannot read {args.data}: {exc}")
        return 1
    if not records and not problems:
        problems.append("the file holds no records")
    for record in records:
        problems += [f"{record.get('id', '?') if isinstance(record, dict) else '?'}: {e}"
                     for e in record_errors(record)]
    ids = Counter(r.get("id") for r in records if isinstance(r, dict))
    problems += [f"{i}: id used {n} times" for i, n in ids.items() if n > 1]
    if problems:
        print(f"{args.data}: {len(problems)} problems", *problems, sep="\n")
        return 1

    internal = find_overlaps(records, records)
    print(f"{args.data}: {len(records)} valid records")
    print(f"near-duplicates inside the set: {len(internal)}")
    for overlap in internal:
        print(f"  {overlap.record_id} ~ {overlap.other_id} ({overlap.kind})")
    external: list[Overlap] = []
    for reference in args.against:
        if not reference.exists():
            print(f"overlap with {reference}: SKIPPED, file not found")
            continue
        others, _ = load_jsonl(reference)
        found = find_overlaps(records, others)
        kinds = Counter(o.kind for o in found)
        print(f"overlap with {reference.parent.name}/{reference.name} ({len(others)} records): "
              f"exact {kinds['exact']}, near {kinds['near']}")
        for overlap in found:
            print(f"  {overlap.record_id} ~ {overlap.other_id} ({overlap.kind})")
        external += found
        if args.loose:
            print_loose_matches(records, others, reference)
    if external and args.drop_overlaps:
        dropped = {o.record_id for o in external}
        kept = [r for r in records if r["id"] not in dropped]
        args.data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
        print(f"dropped {len(dropped)} overlapping records; {len(kept)} remain")
        records, external = kept, []
    if records:
        print()
        print(statistics(records))
    return 1 if internal or external else 0


if __name__ == "__main__":
    sys.exit(main())
