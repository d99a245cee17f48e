"""Label counts of the development set, written into datasets/README.md between the stats markers.

    python datasets/dataset_stats.py           # rewrite the block in README.md
    python datasets/dataset_stats.py --check   # exit 1 if the block is out of date
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from pathlib import Path

from model.evaluate import EvalRecord, load_records
from model.schema import CATEGORIES, POLARITIES

HERE = Path(__file__).parent
DEV_SET = HERE / "dev.jsonl"
README = HERE / "README.md"
BEGIN, END = "<!-- stats:begin -->", "<!-- stats:end -->"


def render_stats(records: list[EvalRecord]) -> str:
    """Markdown tables: overall shape, then entities per category x polarity."""
    entities = [entity for record in records for entity in record.entities]
    per_record = Counter(min(len(record.entities), 3) for record in records)
    contrasting = sum(len({entity.polarity for entity in record.entities}) > 1 for record in records)
    words = statistics.median(len(record.text.split()) for record in records)
    lines = [
        "| | |",
        "|---|---|",
        f"| records | {len(records)} |",
        f"| entities | {len(entities)} |",
        f"| records with 0 / 1 / 2 / 3+ entities | {per_record[0]} / {per_record[1]} / {per_record[2]} / {per_record[3]} |",
        f"| records mixing polarities | {contrasting} |",
        f"| median words per text | {words:g} |",
        "",
        "| category | " + " | ".join(f"`{polarity}`" for polarity in POLARITIES) + " | total |",
        "|---|" + "---:|" * (len(POLARITIES) + 1),
    ]
    cells = Counter((entity.category, entity.polarity) for entity in entities)
    for category in CATEGORIES:
        row = [cells[(category, polarity)] for polarity in POLARITIES]
        lines.append(f"| {category} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    totals = [sum(cells[(category, polarity)] for category in CATEGORIES) for polarity in POLARITIES]
    lines.append("| total | " + " | ".join(map(str, totals)) + f" | {sum(totals)} |")
    return "\n".join(lines)


def readme_with_stats(readme: str, stats: str) -> str:
    head, found, rest = readme.partition(BEGIN)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise ValueError(f"{README} lacks the {BEGIN} ... {END} markers")
    return f"{head}{BEGIN}\n{stats}\n{END}{tail}"


def main(argv: list[str]) -> int:
    current = README.read_text(encoding="utf-8")
    updated = readme_with_stats(current, render_stats(load_records(DEV_SET)))
    if "--check" in argv:
        if updated != current:
            print(f"{README}: counts are out of date; run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
