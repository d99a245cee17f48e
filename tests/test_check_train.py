"""The training-data checker's reports: near-duplicates fail the check, loose matches (the same event told in
other words) are listed for a person to read and do not."""

import importlib.util
import sys
from pathlib import Path

import pytest

from helpers import extraction, write_jsonl

CHECKER = Path(__file__).resolve().parents[1] / "datasets" / "train" / "tools" / "check_train.py"

REFERENCE = {
    "id": "dev-0001",
    "text": "Tesla cut prices of its Model Y in the United States, stepping up pressure on rivals Rivian and Lucid.",
    "extractions": [extraction("Tesla", "~", "Business"), extraction("Rivian", "-", "Business"),
                    extraction("Lucid", "-", "Business")],
}
RETOLD = {
    "id": "team-00001",
    "text": "Rivian and Lucid shares slid after Tesla lowered U.S. prices for its Model Y crossover.",
    "extractions": [extraction("Rivian", "-"), extraction("Lucid", "-"), extraction("Tesla", "0", "Business")],
}
UNRELATED = {
    "id": "team-00002",
    "text": "Kroger raised its full-year sales forecast as grocery volumes improved.",
    "extractions": [extraction("Kroger")],
}


@pytest.fixture(scope="module")
def check_train():
    spec = importlib.util.spec_from_file_location("check_train", CHECKER)
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_train"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["check_train"]


def test_a_retold_event_is_a_loose_match_and_an_unrelated_record_or_itself_is_not(check_train) -> None:
    other_story = {"id": "dev-0002", "text": "Oil prices rose.", "extractions": []}
    matches = check_train.loose_matches([RETOLD, UNRELATED], [REFERENCE, other_story, RETOLD])

    assert [(m.record_id, m.other_id) for m in matches] == [("team-00001", "dev-0001")]
    assert matches[0].shared_entities == ("lucid", "rivian", "tesla")


def test_loose_matches_are_reported_without_failing_the_check(check_train, tmp_path: Path, capsys) -> None:
    data = write_jsonl(tmp_path / "team.jsonl", [RETOLD, UNRELATED])
    reference = write_jsonl(tmp_path / "dev.jsonl", [REFERENCE])

    assert check_train.main(["--data", str(data), "--against", str(reference), "--loose"]) == 0
    report = capsys.readouterr().out
    assert f"loose matches with {tmp_path.name}/dev.jsonl, to read: 1\n" in report
    assert "team-00001 ~ dev-0001" in report and "entities in common: lucid, rivian, tesla" in report
    assert "team-00002" not in report.split("loose matches")[1].split("\n\n")[0]


def test_a_near_duplicate_fails_the_check(check_train, tmp_path: Path, capsys) -> None:
    copy = REFERENCE | {"id": "team-00003", "text": REFERENCE["text"].replace("rivals", "its rivals")}
    data = write_jsonl(tmp_path / "team.jsonl", [copy, UNRELATED])
    reference = write_jsonl(tmp_path / "dev.jsonl", [REFERENCE])

    assert check_train.main(["--data", str(data), "--against", str(reference)]) == 1
    assert "team-00003 ~ dev-0001 (near)" in capsys.readouterr().out
