"""Reviewing extractions: the queue, the interactive loop driven by scripted keystrokes through the real CLI,
decisions landing in a real DuckDB file (also while another process holds it), and JSONL export/import."""

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import tomli_w
from rich.console import Console
from typer.testing import CliRunner

from model.analyzer import AnalysisResult, EntitySentiment
from monitor.cli import app
from scrapers.canonical import canonical_url
from scrapers.feeds import FeedItem
from storage import reviews, writes
from storage.db import Database, DatabaseError
from training.review import (
    InputError, ReviewImportError, ReviewSession, export_reviews, import_reviews, parse_category, parse_polarity,
)  # fmt: skip

NOW = datetime.now(UTC)
runner = CliRunner(env={"COLUMNS": "200"})

# (headline, body, model output: (entity, polarity, category, confidence) ...)
ARTICLES = [
    ("Tesla recalls 2 million cars", "Tesla is recalling 2 million vehicles after a probe by the NHTSA into Autopilot.",
     [("Tesla", "-", "Legal", 0.55), ("NHTSA", "0", "Legal", 0.91)]),
    ("Apple beats estimates", "Apple reported record iPhone revenue, while Samsung lost share in China.",
     [("Apple", "+", "Performance", 0.97)]),
    ("Nvidia names new CFO", "Nvidia appointed a new chief financial officer on Monday.",
     [("Nvidia", "0", "Recruitment", 0.81)]),
    ("Boeing deliveries slump", "Boeing delivered fewer jets in March as Airbus gained orders.",
     [("Boeing", "-", "Performance", 0.72), ("Airbus", "+", "Business", 0.66)]),
]  # fmt: skip


def story(conn, number: int, title: str, body: str, first_seen: datetime) -> tuple[int, int]:
    url = f"https://news.example.com/story-{number}"
    item = FeedItem(url, canonical_url(url), None, title, "", first_seen, ("TSLA",), "http://feeds/x")
    (ref,) = writes.accept_items(conn, [item], first_seen)
    version = writes.store_page(conn, ref.id, first_seen, final_url=url, title=title, body=body, author=None,
                                published_at=first_seen, simhash=None, duplicate_of=None)  # fmt: skip
    return ref.id, version


def analysis(entities, ok: bool = True) -> AnalysisResult:
    return AnalysisResult(
        entities=[EntitySentiment(e, p, c, None, 0.0, conf) for e, p, c, conf in entities], ok=ok,
        error=None if ok else "not valid JSON", raw_output="[]", model="embedded:test", adapter=None,
        prompt_version="1", latency_ms=1.0, attempts=1, prompt_tokens=1, completion_tokens=1,
    )  # fmt: skip


@pytest.fixture
def database(db_path: Path) -> Database:
    """Four analyzed articles, an old one outside the window, and one whose model output failed validation."""
    db = Database(db_path)
    with db.write() as conn:
        for number, (title, body, entities) in enumerate(ARTICLES):
            story_id, version = story(conn, number, title, body, NOW - timedelta(hours=number + 1))
            writes.store_analysis(conn, story_id, version, analysis(entities), NOW)
        old_id, version = story(conn, 10, "Old news", "Intel cut jobs.", NOW - timedelta(days=30))
        writes.store_analysis(conn, old_id, version, analysis([("Intel", "-", "Recruitment", 0.3)]), NOW)
        failed_id, version = story(conn, 11, "Ford misses", "Ford missed estimates.", NOW - timedelta(hours=9))
        writes.store_analysis(conn, failed_id, version, analysis([], ok=False), NOW)
    return db


@pytest.fixture
def config_file(tmp_path: Path, database: Database) -> Path:
    path = tmp_path / "sentimon.toml"
    path.write_text(tomli_w.dumps({"database": str(database.path)}))
    return path


def stored(db: Database) -> list[tuple]:
    with db.read() as conn:
        rows = conn.execute("SELECT story_id, decision, reviewer, extractions, text FROM reviews ORDER BY id").fetchall()
    return [(story_id, decision, reviewer, json.loads(data), text) for story_id, decision, reviewer, data, text in rows]


def story_ids(db: Database) -> dict[str, int]:
    with db.read() as conn:
        return dict(conn.execute("SELECT title, id FROM stories").fetchall())


def test_queue_is_recent_unreviewed_and_least_confident_first(database: Database) -> None:
    with database.write() as conn:
        queue = reviews.review_queue(conn, NOW - timedelta(days=7), limit=10)
    assert [item.title for item in queue] == [
        "Ford misses",  # failed output: nothing to be confident about
        "Tesla recalls 2 million cars",  # 0.55
        "Boeing deliveries slump",  # 0.66
        "Nvidia names new CFO",  # 0.81
        "Apple beats estimates",  # 0.97
    ]
    assert not queue[0].ok and queue[0].entities == ()
    assert [e.entity for e in queue[1].entities] == ["Tesla", "NHTSA"]
    with database.write() as conn:
        assert len(reviews.review_queue(conn, NOW - timedelta(days=7), limit=2)) == 2


def test_scripted_session_stores_every_decision(config_file: Path, database: Database) -> None:
    keys = [
        "a",  # Ford: the model found nothing, and there is nothing to add -> accepted with no entities
        "e", "1", "~", "",  # Tesla: polarity - -> ~, category kept
        "+", "Autopilot", "0", "news",  # ... add a product
        "-", "2",  # ... drop NHTSA
        "a",
        "x",  # Boeing: not a key
        "-", "9",  # not an entity number
        "+", "Airbus SE",  # not in the text
        "+", "Airbus",  # already listed
        "e", "2", "%",  # not a polarity: the edit stops there
        "e", "2", "-", "perf",
        "a",
        "s",  # Nvidia: skipped
        "q",  # Apple: left for later
    ]  # fmt: skip
    result = runner.invoke(app, ["review", "--config", str(config_file), "--reviewer", "alice"],
                           input="\n".join(keys) + "\n", catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    ids = story_ids(database)
    decisions = stored(database)
    assert [(s, d, r) for s, d, r, _, _ in decisions] == [
        (ids["Ford misses"], "accepted", "alice"),
        (ids["Tesla recalls 2 million cars"], "corrected", "alice"),
        (ids["Boeing deliveries slump"], "corrected", "alice"),
        (ids["Nvidia names new CFO"], "skipped", "alice"),
    ]
    assert decisions[0][3] == []
    assert decisions[1][3] == [
        {"entity": "Tesla", "polarity": "~", "category": "Legal"},
        {"entity": "Autopilot", "polarity": "0", "category": "NewsRelease"},
    ]
    assert decisions[2][3] == [
        {"entity": "Boeing", "polarity": "-", "category": "Performance"},
        {"entity": "Airbus", "polarity": "-", "category": "Performance"},
    ]
    # The text stored is what the reviewer saw: the headline, then the body.
    assert decisions[1][4] == "Tesla recalls 2 million cars\n" + ARTICLES[0][1]
    output = " ".join(result.output.split())
    for message in ("'x' is not a choice", "'9' is not an entity number", "'Airbus SE' does not occur in the text",
                    "'Airbus' is already listed", "'%' is not a polarity", "1 accepted, 2 corrected, 1 skipped",
                    "1 left"):  # fmt: skip
        assert message in output

    again = runner.invoke(app, ["review", "--config", str(config_file)], input="q\n", catch_exceptions=False)
    assert "Apple beats estimates" in again.output and "Ford misses" not in again.output


def test_input_ending_mid_article_keeps_what_was_decided(config_file: Path, database: Database) -> None:
    result = runner.invoke(app, ["review", "--config", str(config_file)], input="a\ne\n1\n", catch_exceptions=False)
    assert result.exit_code == 0
    assert [decision for _, decision, _, _, _ in stored(database)] == ["accepted"]
    assert "4 left" in result.output


def test_options_before_a_subcommand_apply_to_it(config_file: Path, database: Database, tmp_path: Path) -> None:
    runner.invoke(app, ["review", "--config", str(config_file)], input="a\nq\n", catch_exceptions=False)
    out = tmp_path / "reviewed.jsonl"
    result = runner.invoke(app, ["review", "-c", str(config_file), "export", "--out", str(out)])
    assert result.exit_code == 0 and "wrote 1 reviewed examples" in result.output


def test_database_errors_say_decisions_are_saved_only_after_one(
    config_file: Path, database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = tmp_path / "missing.toml"
    missing.write_text(tomli_w.dumps({"database": str(tmp_path / "none.duckdb")}))
    fresh = runner.invoke(app, ["review", "--config", str(missing)])
    assert fresh.exit_code == 2 and "no database yet" in fresh.output and "decisions made" not in fresh.output

    store, calls = reviews.store_review, []

    def store_once(conn, review, at) -> None:
        calls.append(review)
        if len(calls) > 1:
            raise DatabaseError("the database is locked")
        store(conn, review, at)

    monkeypatch.setattr(reviews, "store_review", store_once)
    later = runner.invoke(app, ["review", "--config", str(config_file)], input="a\na\n")
    assert later.exit_code == 2 and "locked; decisions made before this one are saved" in later.output


def test_decision_waits_for_a_database_held_by_another_process(database: Database) -> None:
    holder: list[subprocess.Popen] = []

    def ask(question: str) -> str:
        if not holder:  # the daemon's writer (or a DuckDB shell) takes the file while the reviewer thinks
            holder.append(subprocess.Popen(
                [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                 "print('held', flush=True); time.sleep(1.5)", str(database.path)], stdout=subprocess.PIPE, text=True))
            assert holder[0].stdout.readline().strip() == "held"
            return "a"
        raise EOFError

    with database.write() as conn:
        queue = reviews.review_queue(conn, NOW - timedelta(days=7), limit=10)
    session = ReviewSession(database, reviewer="bob", ask=ask, console=Console(quiet=True), text_chars=1600)
    tally = session.run(queue)
    holder[0].wait()
    assert tally.decisions == {"accepted": 1} and tally.left == len(queue) - 1
    assert [(d, r) for _, d, r, _, _ in stored(database)] == [("accepted", "bob")]


def test_export_then_import_round_trips(config_file: Path, database: Database, tmp_path: Path) -> None:
    keys = ["a", "e", "1", "~", "", "a", "s", "+", "Samsung", "-", "bus", "a", "q"]
    runner.invoke(app, ["review", "--config", str(config_file)], input="\n".join(keys) + "\n", catch_exceptions=False)
    out = tmp_path / "reviewed.jsonl"
    result = runner.invoke(app, ["review", "export", "--config", str(config_file), "--out", str(out)])
    assert result.exit_code == 0 and "wrote 3 reviewed examples" in result.output
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert [set(record) for record in exported] == [{"id", "text", "extractions"}] * 3  # the skip is not exported
    assert exported[1]["extractions"] == [{"entity": "Tesla", "polarity": "~", "category": "Legal"},
                                          {"entity": "NHTSA", "polarity": "0", "category": "Legal"}]  # fmt: skip

    other = Database(tmp_path / "other.duckdb")
    with other.write():  # another installation's database
        pass
    assert import_reviews(other, out, reviewer="carol") == (3, 0)
    with other.read() as conn:
        imported = reviews.reviewed_examples(conn)
    assert [(e.record_id, e.text, e.extractions) for e in imported] == [
        (r["id"], r["text"], r["extractions"]) for r in exported]
    again = tmp_path / "again.jsonl"
    export_reviews(other, again)
    assert again.read_text() == out.read_text()
    assert import_reviews(other, out, reviewer="carol") == (0, 3), "importing a file twice adds nothing"
    assert import_reviews(database, out, reviewer="carol") == (0, 3), "the same articles have the same ids"


def test_import_names_every_problem_and_stores_nothing(config_file: Path, database: Database, tmp_path: Path) -> None:
    records = [
        {"id": "ok-1", "text": "Apple rose.", "extractions": [{"entity": "Apple", "polarity": "+", "category": "Performance"}]},
        {"id": "fin-1", "text": "Siemens rallied.",
         "entities": [{"entity": "Siemens", "polarity": "+", "label": "Positive", "start": 0, "end": 7}]},
        {"id": "ok-2", "text": "Meta fell.", "extractions": [{"entity": "Facebook", "polarity": "-", "category": "Legal"}]},
    ]  # fmt: skip
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ReviewImportError) as caught:
        import_reviews(database, bad, reviewer="x")
    assert "record fin-1: has FinEntity 'entities' without categories" in str(caught.value)
    assert "record ok-2: entity 'Facebook' does not occur in its text" in str(caught.value)

    bad.write_text(json.dumps(records[0]) + "\n{not json\n")
    result = runner.invoke(app, ["review", "import", "--config", str(config_file), str(bad)])
    assert result.exit_code == 2 and "bad.jsonl:2: invalid JSON" in result.output
    assert stored(database) == []


def test_answers_are_parsed_forgivingly_but_never_guessed() -> None:
    assert parse_category("1") == "Legal" and parse_category("PERF") == "Performance"
    assert parse_category("", keep="Business") == "Business"
    assert parse_polarity("", keep="+") == "+" and parse_polarity(" ~ ") == "~"
    for answer in ("b", "7", "0", "", "Lawsuit"):  # "b": Business or Bankruptcy?
        with pytest.raises(InputError, match="is not a category"):
            parse_category(answer)
    with pytest.raises(InputError, match="is not a polarity"):
        parse_polarity("positive")
