"""Assembling the LoRA training set: development-set separation, dedupe across sources, FinEntity's masked
categories (checked down to the tokens the loss skips), the stable held-out fold, the data hash."""

import hashlib
import json
from pathlib import Path

import pytest
from llama_cpp import Llama

from model.embedded import embedded_model_path
from model.evaluate import DatasetError
from model.prompt import build_prompt
from storage.reviews import ReviewedExample
from training.convert import hf_base_dir, load_tokenizer
from training.dataset import DataSources, assemble, in_holdout, normalize_text, overlaps
from training.packing import encode
from helpers import extraction, write_jsonl

DEV_TEXT = "Nvidia shares rise 4% after quarterly revenue tops estimates on data-center demand"


def count_words(text: str) -> int:
    return len(text.split())


def finentity(record_id: str, text: str, *entities: tuple[str, str]) -> dict:
    spans = []
    for name, polarity in entities:
        start = text.index(name)
        spans.append({"entity": name, "polarity": polarity, "label": "x", "start": start, "end": start + len(name)})
    return {"id": record_id, "text": text, "entities": spans}


@pytest.fixture
def sources(tmp_path: Path) -> DataSources:
    dev = write_jsonl(tmp_path / "dev.jsonl", [
        {"id": "dev-1", "text": DEV_TEXT, "extractions": [extraction("Nvidia")]},
    ])  # fmt: skip
    team = write_jsonl(tmp_path / "team.jsonl", [
        {"id": "team-1", "text": "Apple shares jump after iPhone sales beat forecasts",
         "extractions": [extraction("Apple"), extraction("iPhone", category="NewsRelease")]},
        {"id": "team-2", "text": "NVIDIA shares rise 4% after quarterly revenue tops estimates on data center demand!",
         "extractions": [extraction("NVIDIA")]},  # the dev record, respelled
        {"id": "team-3", "text": f"Chip stocks rallied. {DEV_TEXT}. AMD followed.",
         "extractions": [extraction("AMD")]},  # contains the dev record
        {"id": "team-4", "text": "Pfizer cuts 500 jobs at its Michigan plant",
         "extractions": [extraction("Pfizer", "-", "Recruitment")]},
        {"id": "team-5", "text": "Markets were closed for the holiday.", "extractions": []},
    ])  # fmt: skip
    fin = write_jsonl(tmp_path / "finentity.jsonl", [
        finentity(f"fe-{i}", f"Siemens is rallying {i}% after a boom in orders while the materials sector lags and "
                  f"Huhtamaki slips.", ("Huhtamaki", "-"), ("materials", "-"), ("Siemens", "+"), ("Siemens", "+"))
        for i in range(30)
    ])  # fmt: skip
    return DataSources(team=team, finentity=fin, dev=dev)


def test_sources_are_merged_without_dev_text_or_duplicates(sources: DataSources) -> None:
    reviewed = [
        ReviewedExample(7, "news-1", "Pfizer cuts 500 jobs at its Michigan plant.", [extraction("Pfizer", "~", "Recruitment")]),
        ReviewedExample(9, "news-2", DEV_TEXT.upper(), [extraction("NVIDIA")]),
    ]  # fmt: skip
    data = assemble(count_tokens=count_words, reviewed=reviewed, sources=sources)

    texts = [record.text for record in data.records]
    assert not any(overlaps(normalize_text(text), [normalize_text(DEV_TEXT)]) for text in texts)
    assert "Pfizer cuts 500 jobs at its Michigan plant." in texts, "the review wins over the team's record"
    assert "Pfizer cuts 500 jobs at its Michigan plant" not in texts
    held_out = len(data.finentity_holdout)
    assert data.counts() == {"review": 1, "team": 2, "finentity": 30 - held_out}
    assert data.dropped == {"dev_overlap": 3, "duplicate": 1}  # team-2, team-3, the upper-case review; team-4
    assert data.review_watermark == 9
    assert data.examples[0].completion == json.dumps([extraction("Pfizer", "~", "Recruitment")])
    # Prompts are the inference prompt of an adapter, byte for byte.
    assert data.examples[0].prompt == build_prompt(texts[0], tokenizer_count=count_words, tuned=True).text(None)


def test_finentity_categories_are_placeholders_kept_out_of_the_loss(sources: DataSources) -> None:
    data = assemble(count_tokens=count_words, sources=sources)
    (example, record) = next((e, r) for e, r in zip(data.examples, data.records) if r.source == "finentity")
    assert [m.entity for m in record.mentions] == ["Siemens", "Huhtamaki"], "text order, sector and repeat dropped"
    assert [example.completion[a:b] for a, b in example.exclude_spans] == ["Business", "Business"]
    assert all(not e.exclude_spans for e, r in zip(data.examples, data.records) if r.source != "finentity")

    tokenizer = load_tokenizer(hf_base_dir(embedded_model_path(), progress=False))
    (encoded,) = encode([example], tokenizer, max_tokens=2048)
    completion_ids = encoded.tokens[encoded.prompt_len : -1]
    skipped = "".join(tokenizer.decode([t]) for t, weight in zip(completion_ids, encoded.loss_weights) if not weight)
    learned = "".join(tokenizer.decode([t]) for t, weight in zip(completion_ids, encoded.loss_weights) if weight)
    assert skipped.replace('"', "").replace(" ", "") == "BusinessBusiness"
    assert '"polarity": "+"' in learned and "Siemens" in learned and "Business" not in learned


def test_the_held_out_fold_is_fixed_by_id(sources: DataSources, tmp_path: Path) -> None:
    first = assemble(count_tokens=count_words, sources=sources)
    records = [json.loads(line) for line in sources.finentity.read_text().splitlines()]
    extra = finentity("fe-new", "Bayer fell after a court ruling.", ("Bayer", "-"))
    shuffled = write_jsonl(tmp_path / "shuffled.jsonl", [extra, *reversed(records)])
    second = assemble(count_tokens=count_words, sources=DataSources(sources.team, shuffled, sources.dev))
    assert {r.id for r in first.finentity_holdout} <= {r.id for r in second.finentity_holdout}
    held_out = {r.id for r in second.finentity_holdout}
    assert not held_out & {r.id for r in second.records}
    real = [json.loads(line)["id"] for line in DataSources().finentity.read_text().splitlines()]
    share = sum(in_holdout(record_id, DataSources()) for record_id in real) / len(real)
    assert 0.17 < share < 0.23, share


def test_data_hash_is_the_sha256_of_the_examples_file(sources: DataSources, tmp_path: Path) -> None:
    data = assemble(count_tokens=count_words, sources=sources)
    path = data.write_jsonl(tmp_path / "examples.jsonl")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == data.data_hash
    assert assemble(count_tokens=count_words, sources=sources).data_hash == data.data_hash
    changed = [ReviewedExample(1, "news-9", "Ford recalls 1,000 trucks.", [extraction("Ford", "-", "Legal")])]
    assert assemble(count_tokens=count_words, reviewed=changed, sources=sources).data_hash != data.data_hash


def test_the_shipped_data_assembles_with_the_real_tokenizer() -> None:
    vocab = Llama(str(embedded_model_path()), vocab_only=True, verbose=False)
    data = assemble(count_tokens=lambda text: len(vocab.tokenize(text.encode(), add_bos=False, special=False)))
    counts = data.counts()
    assert counts["team"] > 1800 and 500 < counts["finentity"] < 600
    finentity = [(e, r) for e, r in zip(data.examples, data.records) if r.source == "finentity"]
    assert all(len(e.exclude_spans) == len(r.mentions) for e, r in finentity)
    dev = [normalize_text(line) for line in (json.loads(l)["text"] for l in DataSources().dev.read_text().splitlines())]
    assert not any(overlaps(normalize_text(record.text), dev) for record in data.records)


def test_an_unusable_source_line_is_named(sources: DataSources) -> None:
    sources.team.write_text(sources.team.read_text() + '{"id": "team-9", "text": "x", "extractions": [{"entity": "x"}]}\n')
    with pytest.raises(DatasetError, match=r"team.jsonl:6: record team-9, entity #1 \(x\): polarity None"):
        assemble(count_tokens=count_words, sources=sources)
