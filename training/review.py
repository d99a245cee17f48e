"""Reviewing the model's extractions (`sentimon review`), and moving reviewed examples in and out as JSONL.

The session walks recent analyses least confident first. For each article it shows the text as the model read it
and the entities it found, and takes one key at a time:

    a  accept the list as shown (with any edits made)      e  edit an entity's polarity or category
    +  add an entity the model missed                      -  drop an entity
    s  skip (not used for training)                        q  quit

Each decision is written at once, in its own short transaction, so the session runs beside the daemon and a quit,
a crash or Ctrl-D loses at most the article on screen.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from model.evaluate import DatasetError, load_records
from model.linking import normalize_name
from model.prompt import build_prompt
from model.schema import CATEGORIES, POLARITIES
from storage import reviews
from storage.db import Database
from storage.reviews import QueuedAnalysis, Review
from training.files import write_atomically

Ask = Callable[[str], str]  # shows a prompt, returns the line typed; raises EOFError when input ends
Mention = dict[str, str]  # {"entity", "polarity", "category"}: the extraction format

CHARS_PER_TOKEN = 4  # the reviewer sees about as much of an article as the model's token budget lets it read
KEYS = "[a]ccept [e]dit [+]add [-]drop [s]kip [q]uit"
POLARITY_HELP = "+ good for it, - bad, 0 neutral, ~ depends"


class InputError(ValueError):
    """A reviewer's answer that can't be used; shown, and the question is asked again."""


class ReviewImportError(ValueError):
    """A file of reviewed examples that can't be imported; the message lists every problem. Nothing is stored."""


@dataclass
class ReviewTally:
    decisions: Counter[str] = field(default_factory=Counter)  # accepted / corrected / skipped -> count
    left: int = 0  # articles of the queue not decided (quit early)


def default_reviewer() -> str:
    return os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"


def ensure_schema(database: Database) -> None:
    """Fail with the usual message when there is no database yet; bring an older file's schema up to date."""
    with database.read():
        pass
    with database.write():  # migrations run on the first write; a no-op once the schema is current
        pass


def review_text(title: str | None, body: str, max_chars: int) -> str:
    """The article as the model reads it: headline, then the body, cut at a word boundary near its budget."""
    return build_prompt(body, title=title, tokenizer_count=len, max_tokens=max_chars).document


class ReviewSession:
    def __init__(self, database: Database, *, reviewer: str, ask: Ask, console: Console, text_chars: int) -> None:
        self.database = database
        self.reviewer = reviewer
        self.ask = ask
        self.console = console
        self.text_chars = text_chars
        self.tally = ReviewTally()  # what was decided and stored so far; kept when a database error ends the run

    def run(self, queue: Sequence[QueuedAnalysis]) -> ReviewTally:
        tally = self.tally
        for position, item in enumerate(queue, start=1):
            text = review_text(item.title, item.body, self.text_chars)
            try:
                review = self._review(item, text, f"{position}/{len(queue)}")
            except EOFError:
                review = None
            if review is None:
                tally.left = len(queue) - position + 1
                break
            with self.database.write() as conn:
                reviews.store_review(conn, review, datetime.now(UTC))
            tally.decisions[review.decision] += 1
            self.console.print(f"[green]saved[/] ({review.decision})")
        return tally

    def _review(self, item: QueuedAnalysis, text: str, where: str) -> Review | None:
        """The reviewer's decision on one article, or None to quit."""
        predicted = [{"entity": e.entity, "polarity": e.polarity, "category": e.category} for e in item.entities]
        draft = [dict(mention) for mention in predicted]
        self._show_article(item, text, where)
        self._show_entities(item, draft)
        while True:
            key = self.ask(KEYS).strip().lower()
            try:
                if key in ("a", "s"):
                    decision = "skipped" if key == "s" else "accepted" if draft == predicted else "corrected"
                    return Review(item.record_id, text, draft if key == "a" else predicted, decision, self.reviewer,
                                  item.story_id, item.analysis_id)  # fmt: skip
                if key == "q":
                    return None
                if key == "e":
                    self._edit(draft)
                elif key == "+":
                    draft.append(self._new_mention(text, draft))
                elif key == "-":
                    del draft[self._index(draft, "drop")]
                else:
                    raise InputError(f"{repr(key) if key else 'an empty line'} is not a choice; type one of {KEYS}")
            except InputError as exc:
                self.console.print(f"[red]{escape(str(exc))}[/]", highlight=False)
                continue
            self._show_entities(item, draft)

    def _edit(self, draft: list[Mention]) -> None:
        mention = draft[self._index(draft, "edit")]
        polarity = parse_polarity(
            self.ask(f"polarity of {mention['entity']} ({POLARITY_HELP}; Enter keeps {mention['polarity']})"),
            keep=mention["polarity"],
        )
        category = parse_category(
            self.ask(f"category ({category_menu()}; Enter keeps {mention['category']})"), keep=mention["category"]
        )
        mention.update(polarity=polarity, category=category)

    def _new_mention(self, text: str, draft: list[Mention]) -> Mention:
        name = self.ask("entity, as written in the text").strip()
        if not name:
            raise InputError("no entity added: the name is empty")
        if name not in text:
            raise InputError(f"{name!r} does not occur in the text; write the name exactly as the article does")
        if any(normalize_name(m["entity"]) == normalize_name(name) for m in draft):
            raise InputError(f"{name!r} is already listed; use e to change it")
        polarity = parse_polarity(self.ask(f"polarity ({POLARITY_HELP})"))
        category = parse_category(self.ask(f"category ({category_menu()})"))
        return {"entity": name, "polarity": polarity, "category": category}

    def _index(self, draft: list[Mention], action: str) -> int:
        if not draft:
            raise InputError(f"there is no entity to {action}")
        answer = self.ask(f"number of the entity to {action} (1-{len(draft)})").strip()
        if not answer.isdigit() or not 1 <= int(answer) <= len(draft):
            raise InputError(f"{answer!r} is not an entity number; the list has 1 to {len(draft)}")
        return int(answer) - 1

    def _show_article(self, item: QueuedAnalysis, text: str, where: str) -> None:
        facts = [where, f"story {item.story_id}", f"lowest confidence {item.min_confidence:.2f}"]
        if item.adapter:
            facts.append(f"adapter {Path(item.adapter).parent.name}")
        self.console.print(Panel(Text(text), title=" · ".join(facts), title_align="left"))
        if not item.ok:
            self.console.print(f"[yellow]the model's output failed validation:[/] {escape(item.error or '')}")

    def _show_entities(self, item: QueuedAnalysis, draft: list[Mention]) -> None:
        found = {(e.entity, e.polarity, e.category): e for e in item.entities}
        table = Table(show_edge=False)
        for column in ("#", "entity", "polarity", "category", "confidence", "ticker"):
            table.add_column(column)
        for number, mention in enumerate(draft, start=1):
            model = found.get((mention["entity"], mention["polarity"], mention["category"]))
            confidence, ticker = (f"{model.confidence:.2f}", model.ticker or "") if model else ("edited", "")
            table.add_row(str(number), escape(mention["entity"]), escape(mention["polarity"]), mention["category"],
                          confidence, ticker)  # fmt: skip
        self.console.print(table if draft else "[dim]no entities[/]")


def parse_polarity(answer: str, keep: str | None = None) -> str:
    answer = answer.strip()
    if not answer and keep is not None:
        return keep
    if answer not in POLARITIES:
        raise InputError(f"{answer!r} is not a polarity; type one of {' '.join(POLARITIES)} ({POLARITY_HELP})")
    return answer


def parse_category(answer: str, keep: str | None = None) -> str:
    """A category by its number in the menu or by the start of its name ("perf", "news")."""
    answer = answer.strip()
    if not answer and keep is not None:
        return keep
    if answer.isdigit() and 1 <= int(answer) <= len(CATEGORIES):
        return CATEGORIES[int(answer) - 1]
    matches = [c for c in CATEGORIES if answer and c.lower().startswith(answer.lower())]
    if len(matches) != 1:
        raise InputError(f"{answer!r} is not a category; type a number or a name: {category_menu()}")
    return matches[0]


def category_menu() -> str:
    return " ".join(f"{number}={name}" for number, name in enumerate(CATEGORIES, start=1))


def export_reviews(database: Database, out: Path) -> int:
    """Write every reviewed example as JSONL in the extraction format ({"id", "text", "extractions"}); returns
    how many. The file is replaced only once it is complete."""
    ensure_schema(database)
    with database.read() as conn:
        examples = reviews.reviewed_examples(conn)
    lines = [json.dumps({"id": e.record_id, "text": e.text, "extractions": e.extractions}, ensure_ascii=False)
             for e in examples]  # fmt: skip
    write_atomically(out, "".join(line + "\n" for line in lines))
    return len(lines)


def import_reviews(database: Database, path: Path, *, reviewer: str) -> tuple[int, int]:
    """Store the examples of a JSONL file in the extraction format as reviewed (all of them, or none if any is
    unusable). Returns (added, unchanged: already stored the same)."""
    try:
        records = load_records(path)
    except DatasetError as exc:
        raise ReviewImportError(str(exc)) from None
    problems = []
    for record in records:
        if not record.has_categories:
            problems.append(f"record {record.id}: has FinEntity 'entities' without categories; reviewed examples "
                            "need 'extractions' with a category each")  # fmt: skip
        problems += [f"record {record.id}: entity {e.entity!r} does not occur in its text"
                     for e in record.entities if e.entity not in record.text]  # fmt: skip
    if problems:
        raise ReviewImportError(f"{len(problems)} problem(s) in {path}, nothing imported:\n" + "\n".join(problems))
    incoming = [
        Review(record.id, record.text, [{"entity": e.entity, "polarity": e.polarity, "category": e.category}
                                        for e in record.entities], "accepted", reviewer)
        for record in records
    ]  # fmt: skip
    ensure_schema(database)
    with database.write() as conn:
        return reviews.import_reviews(conn, incoming, datetime.now(UTC))
