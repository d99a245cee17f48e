"""Entity -> ticker linking over the shipped alias table (model/data/aliases.csv)."""

from pathlib import Path

import pytest

from model.linking import DEFAULT_ALIAS_TABLE, AliasTableError, EntityLinker, normalize_name


@pytest.fixture(scope="module")
def linker() -> EntityLinker:
    return EntityLinker()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Apple Inc.", "apple"),
        ("The Coca-Cola Co.", "coca cola"),
        ("JPMorgan Chase & Co.", "jpmorgan chase"),
        ("Johnson & Johnson", "johnson and johnson"),
        ("McDonald's Corp", "mcdonald"),
        ("Nestlé S.A.", "nestle"),
        ("L'Oréal", "loreal"),
        ("U.S. Steel", "us steel"),
        ("ASML Holding N.V.", "asml"),
        ("Alibaba Group Holding Ltd", "alibaba"),
        ("Siemens AG", "siemens"),
        ("Johnson & Johnson <JNJ.N>", "johnson and johnson"),
        ("Apple Inc. (NASDAQ: AAPL)", "apple"),
        ("Alphabet Inc. Class C", "alphabet class c"),
        ("Group", "group"),  # a suffix alone is kept, not emptied
    ],
)
def test_normalize_name(name: str, expected: str) -> None:
    assert normalize_name(name) == expected


@pytest.mark.parametrize(
    ("entity", "ticker"),
    [
        ("Apple", "AAPL"),
        ("Apple Inc.", "AAPL"),
        ("APPLE INC", "AAPL"),
        ("Microsoft's", "MSFT"),
        ("J&J", "JNJ"),
        ("Alphabet", "GOOGL"),
        ("Google", "GOOGL"),
        ("Berkshire Hathaway", "BRK-B"),
        ("Target", "TGT"),
        ("eBay", "EBAY"),
        ("Nasdaq Inc.", "NDAQ"),
        ("Dow Chemical", "DOW"),
        ("News Corp", "NWSA"),
        ("Toyota", "7203.T"),
        ("Samsung Electronics", "005930.KS"),
        ("TSMC", "2330.TW"),
        ("Tencent", "0700.HK"),
        ("Nestlé", "NESN.SW"),
        ("LVMH", "MC.PA"),
        ("Novo Nordisk A/S", "NOVO-B.CO"),
        ("Hess", "CVX"),  # acquired companies link to their acquirer
    ],
)
def test_exact_names(linker: EntityLinker, entity: str, ticker: str) -> None:
    assert linker.link(entity) == ticker


@pytest.mark.parametrize(
    ("entity", "ticker"),
    [
        ("AAPL", "AAPL"),
        ("BRK.B", "BRK-B"),
        ("$nvda", "NVDA"),
        ("$IT", "IT"),
        ("Johnson & Johnson <JNJ.N>", "JNJ"),
        ("<AAPL.O>", "AAPL"),
        ("<BRKb.N>", "BRK-B"),  # Reuters writes the share class in lower case
        ("<XYZW.OQ>", "XYZW"),  # an explicit US code is trusted even when the table lacks it
        ("<7203.T>", "7203.T"),
        ("Siemens <SIEGn.DE>", "SIE.DE"),  # unknown foreign code: falls back to the name
        ("Acme Corp (NYSE: ACME)", "ACME"),
    ],
)
def test_explicit_symbols(linker: EntityLinker, entity: str, ticker: str) -> None:
    assert linker.link(entity) == ticker


@pytest.mark.parametrize(
    "entity",
    [
        "the Fed",
        "Federal Reserve",
        "S&P 500",
        "<.SPX>",
        "Nasdaq",
        "the Dow",
        "investors",
        "ChatGPT",
        "OpenAI",
        "Wall Street",
        "",
        "   ",
        "IT",  # the sector, not Gartner; "$IT" is Gartner
        "apple",  # lower-case single word: the fruit
        "target",
    ],
)
def test_non_companies_stay_unlinked(linker: EntityLinker, entity: str) -> None:
    assert linker.link(entity) is None
    assert linker.link(entity, hints=("AAPL", "NVDA")) is None  # a hint is never the answer


@pytest.mark.parametrize(
    "entity",
    ["Apple Hospitality", "Apple Hospitality REIT", "Target Hospitality", "price target", "Metal", "Shells", "Metas"],
)
def test_fuzzy_false_positives_rejected(linker: EntityLinker, entity: str) -> None:
    assert linker.link(entity) is None
    assert linker.link(entity, hints=("AAPL", "TGT", "META", "SHEL")) is None


@pytest.mark.parametrize(
    ("entity", "ticker"),
    [
        ("Bank of Amerca", "BAC"),
        ("General Motor", "GM"),
        ("Exxonmobil", "XOM"),
        ("Exxon Mobile", "XOM"),
        ("Meta Platform", "META"),
        ("Proctor & Gamble", "PG"),
        ("Berkshire Hathway", "BRK-B"),
    ],
)
def test_fuzzy_matches_misspellings(linker: EntityLinker, entity: str, ticker: str) -> None:
    assert linker.link(entity) == ticker


def test_hints_pick_among_companies_sharing_a_name(linker: EntityLinker) -> None:
    assert linker.link("Alphabet", hints=("GOOG",)) == "GOOG"
    assert linker.link("Alphabet", hints=("goog ",)) == "GOOG"  # hints are tickers in any case
    assert linker.link("Toyota", hints=("TM",)) == "TM"
    assert linker.link("TSMC", hints=("TSM",)) == "TSM"
    assert linker.link("Berkshire", hints=("BRK-A",)) == "BRK-A"


def test_entity_naming_another_company_ignores_the_hint(linker: EntityLinker) -> None:
    assert linker.link("Amazon", hints=("AAPL",)) == "AMZN"
    assert linker.link("Alphabet Class C", hints=("GOOGL",)) == "GOOG"
    assert linker.link("Microsoft", hints=("GOOG", "GOOGL")) == "MSFT"


@pytest.mark.parametrize(("entity", "hint"), [("Toyota Motor ADR", "TM"), ("Alphabet Cl C", "GOOG")])
def test_hint_lifts_a_near_fuzzy_match(linker: EntityLinker, entity: str, hint: str) -> None:
    # Both score 85-90 against a name of the hinted company: below the cutoff of 90 on their own.
    assert linker.link(entity) is None
    assert linker.link(entity, hints=(hint,)) == hint


def test_every_table_name_links_back_to_its_ticker(linker: EntityLinker) -> None:
    rows = [line.split(",") for line in DEFAULT_ALIAS_TABLE.read_text(encoding="utf-8").splitlines()]
    rows = [row for row in rows if row[0] and not row[0].startswith("#") and row[0] != "ticker"]
    assert len(rows) >= 700
    mismatched = [(ticker, name) for ticker, name, *_ in rows if linker.link(name, hints=(ticker,)) != ticker]
    assert mismatched == []


def test_table_covers_index_members_and_foreign_listings(linker: EntityLinker) -> None:
    expected = {
        "AAPL", "NVDA", "BRK-B", "JPM", "XOM", "UNH", "CAT", "LIN", "PLD", "NEE", "GOOG", "FOXA", "NWS",
        "7203.T", "6758.T", "005930.KS", "2330.TW", "TSM", "ASML", "NESN.SW", "MC.PA", "SAP", "SHEL",
        "HSBA.L", "BP.L", "NOVO-B.CO", "BABA", "0700.HK",
    }  # fmt: skip
    assert expected <= linker.tickers
    assert len(linker.tickers) >= 700


def test_extra_aliases_extend_and_override_the_table() -> None:
    linker = EntityLinker(extra_aliases={"Acme Widgets": "acme", "Apple": "APLE"})
    assert linker.link("Acme Widgets Inc.") == "ACME"
    assert linker.link("Apple") == "APLE"  # the user's alias wins ...
    assert linker.link("Apple", hints=("AAPL",)) == "AAPL"  # ... unless the feed says otherwise


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"Acme": "not a ticker!"}, "'Acme': 'not a ticker!' is not a ticker symbol"),
        ({"Acme": ""}, "'Acme': '' is not a ticker symbol"),
        ({"  ,. ": "ACME"}, "has no letters or digits"),
    ],
)
def test_bad_extra_alias_is_named(extra: dict[str, str], message: str) -> None:
    with pytest.raises(AliasTableError, match=message):
        EntityLinker(extra_aliases=extra)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ticker,company\nAAPL,Apple\n", r"table.csv:1: expected header 'ticker,name,aliases'"),
        ("# comment\nticker,name,aliases\naapl,Apple,\n", r"table.csv:3: 'aapl' is not an upper-case ticker"),
        ("ticker,name,aliases\nAAPL,,Apple\n", r"table.csv:2: ticker AAPL has no name"),
        ("ticker,name,aliases\nAAPL,Apple\n", r"table.csv:2: expected 3 fields"),
        ("ticker,name,aliases\nAAPL,Apple,\n\nAAPL,Apple Inc,\n", r"table.csv:4: ticker AAPL already listed on line 2"),
        ("# only a comment\n", r"no rows"),
    ],
)
def test_bad_table_is_named_with_line(tmp_path: Path, content: str, message: str) -> None:
    table = tmp_path / "table.csv"
    table.write_text(content, encoding="utf-8")
    with pytest.raises(AliasTableError, match=message):
        EntityLinker(table)


def test_missing_table_is_named(tmp_path: Path) -> None:
    with pytest.raises(AliasTableError, match="cannot read alias table .*missing.csv"):
        EntityLinker(tmp_path / "missing.csv")


def test_custom_table(tmp_path: Path) -> None:
    table = tmp_path / "table.csv"
    table.write_text("ticker,name,aliases\nACME,Acme Corporation,Acme|Roadrunner Traps\n", encoding="utf-8")
    linker = EntityLinker(table)
    assert linker.link("Roadrunner Traps") == "ACME"
    assert linker.link("Apple") is None
    assert linker.tickers == {"ACME"}


@pytest.mark.parametrize("score", [0, -5, 101])
def test_min_score_out_of_range(score: float) -> None:
    with pytest.raises(ValueError, match="min_score must be in"):
        EntityLinker(min_score=score)
