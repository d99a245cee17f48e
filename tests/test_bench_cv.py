"""The FinEntity cross-validation benchmark: the folds split FinEntity into fifths, pooling counts entities, and a
tiny real fold (one training step on the real data, two held-out records scored with the real analyzer)."""

import dataclasses
import json
from pathlib import Path

from bench.finentity_cv import FOLDS, main, pooled_f1
from training.dataset import DataSources, in_holdout
from training.registry import BUNDLED_ADAPTER, AdapterRegistry


def test_the_folds_split_finentity_into_disjoint_fifths() -> None:
    ids = [json.loads(line)["id"] for line in DataSources().finentity.read_text(encoding="utf-8").splitlines()]
    folds = [{i for i in ids if in_holdout(i, dataclasses.replace(DataSources(), holdout_fold=k))} for k in FOLDS]
    assert len(folds) == 5
    assert sum(map(len, folds)) == len(set().union(*folds)) == len(ids)
    assert all(0.17 < len(fold) / len(ids) < 0.23 for fold in folds), [len(fold) for fold in folds]


def test_pooled_f1_counts_entities_across_folds_not_folds() -> None:
    def fold(right: int, gold: int, predicted: int) -> dict:
        confusion = {"+": {"+": right, "-": gold - right}}
        return {"report": {"n_gold_entities": gold, "n_predicted_entities": predicted, "polarity_confusion": confusion}}

    # one fold all right on 1 entity, one all wrong on 9: pooled 2·1/20, where the mean of the two F1s is 0.5
    assert pooled_f1([fold(1, 1, 1), fold(0, 9, 9)]) == 0.1


def test_a_fold_trains_without_its_records_and_scores_them(tmp_path: Path, capsys) -> None:
    assert main(["--folds", "1", "--out", str(tmp_path), "--steps", "1", "--limit", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    [record] = summary["folds"]
    assert record["fold"] == 1 and record["report"]["n_records"] == 2
    assert not record["finished"]  # one step of a full run, two records of a fold: not a figure to keep
    assert record["adapter"] == str(tmp_path / "fold-1" / "adapter.gguf") and Path(record["adapter"]).is_file()
    assert json.loads((tmp_path / "fold-1" / "metrics.json").read_text()) == record
    assert summary["pooled_entity_polarity_f1"] == record["report"]["entity_polarity_f1"]
    assert record["examples"]["team"] > 1800 and record["examples"]["finentity"] > 500


def test_fold_0_scores_the_shipped_adapter_when_it_was_trained_on_that_data(tmp_path: Path, capsys) -> None:
    assert main(["--folds", "0", "--out", str(tmp_path), "--steps", "1", "--limit", "1"]) == 0
    [record] = json.loads(capsys.readouterr().out)["folds"]
    assert json.loads((tmp_path / "fold-0" / "metrics.json").read_text()) == record
    if record["data_hash"] == AdapterRegistry(tmp_path).bundled_manifest().data_hash:
        assert record["adapter"] == str(BUNDLED_ADAPTER) and not (tmp_path / "fold-0" / "checkpoint.pt").exists()
    else:  # the data changed since the shipped adapter was trained: fold 0 is trained like the others
        assert record["adapter"] == str(tmp_path / "fold-0" / "adapter.gguf")
