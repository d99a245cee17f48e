"""Link entity names from the model ("Apple Inc.", "J&J", "Siemens <SIEGn.DE>") to tickers.

Order of resolution: an explicit symbol in the name (Reuters code, "(NYSE: X)", "$X"), then an exact
lookup of the normalised name in the alias table, then a bare ticker ("AAPL"), then fuzzy matching.
Feed tickers passed as hints only break ties between candidates; they never become the answer on
their own, so "the Fed" or "investors" stay unlinked whatever feed they came from.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path

from rapidfuzz import fuzz, process

DEFAULT_ALIAS_TABLE = Path(__file__).parent / "data" / "aliases.csv"

LEGAL_SUFFIXES = frozenset({
    "inc", "incorporated", "corp", "corporation", "co", "company", "companies", "plc", "ltd", "limited",
    "llc", "lp", "holdings", "holding", "group", "ag", "se", "nv", "sa", "spa", "ab", "asa", "oyj", "bv",
    "and",  # left over from "& Co." once "co" is gone
})
# Names that lose their meaning without the legal suffix: "the Nasdaq fell" is the market, not
# Nasdaq Inc. (NDAQ), "the Dow" is not Dow Inc. These match only when written with the suffix.
GENERIC_NAMES = frozenset({"nasdaq", "dow", "news"})
# Tickers that are also everyday words or acronyms ("IT spending"): linked only as "$IT".
WORD_TICKERS = frozenset({"IT", "ON", "ALL", "NOW", "LOW", "KEY", "DAY", "ARE", "SO", "HAS"})
# Reuters exchange codes of US venues: <JNJ.N> (NYSE), <AAPL.O> / <AAPL.OQ> (Nasdaq), ...
US_RIC_EXCHANGES = frozenset({"N", "O", "OQ", "A", "P", "K", "Q", "NB"})

FUZZY_MIN_LENGTH = 8  # shorter names differ from other companies' by a letter or two ("Meta"/"Metal")
HINT_BONUS = 5.0  # fuzzy score points for a candidate whose ticker is among the hints

_RIC = re.compile(r"<\s*(?P<root>[A-Za-z0-9][A-Za-z0-9\-]*?)(?:\.(?P<exchange>[A-Za-z]{1,3}))?\s*>")
_EXCHANGE_PREFIXED = re.compile(r"\(\s*[A-Za-z][A-Za-z ]*:\s*\$?(?P<symbol>[A-Za-z][A-Za-z0-9.\-]*)\s*\)")
_CASHTAG = re.compile(r"^\$(?P<symbol>[A-Za-z][A-Za-z0-9.\-]*)$")
_TICKER = re.compile(r"^[A-Z0-9][A-Z0-9.\-]*$")
_BRACKETED = re.compile(r"\([^)]*\)|<[^>]*>")
_POSSESSIVE = re.compile(r"['’]s\b")
_DROPPED = re.compile(r"[.'’`]")  # U.S. -> us, O'Reilly -> oreilly
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


class AliasTableError(ValueError):
    """The alias table or the extra aliases contain an entry that cannot be used."""


def normalize_name(name: str, *, strip_suffixes: bool = True) -> str:
    """Canonical form of a company name for matching: 'The Coca-Cola Co.' -> 'coca cola'."""
    text = unicodedata.normalize("NFKD", name)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = _BRACKETED.sub(" ", text)
    text = _POSSESSIVE.sub("", text).replace("&", " and ")
    tokens = _NON_ALNUM.sub(" ", _DROPPED.sub("", text)).split()
    if len(tokens) > 1 and tokens[0] == "the":
        tokens = tokens[1:]
    share_class = tokens[-2:] if len(tokens) > 2 and tokens[-2] == "class" and len(tokens[-1]) == 1 else []
    tokens = tokens[: len(tokens) - len(share_class)]  # "Alphabet Inc. Class C": strip "inc" before the class
    while strip_suffixes and len(tokens) > 1 and tokens[-1] in LEGAL_SUFFIXES:
        tokens.pop()
    return " ".join(tokens + share_class)


class EntityLinker:
    """Resolves entity names to tickers; build once, then call `link` as often as needed."""

    def __init__(
        self,
        table: Path | None = None,
        *,
        extra_aliases: Mapping[str, str] | None = None,
        min_score: float = 90,
    ) -> None:
        if not 0 < min_score <= 100:
            raise ValueError(f"min_score must be in (0, 100], got {min_score}")
        self.min_score = min_score
        self._candidates: dict[str, list[str]] = {}
        self._tickers: set[str] = set()
        # User aliases go first so that they win over the table's.
        for alias, ticker in _checked_extra_aliases(extra_aliases or {}):
            self._add(ticker, [alias])
        for ticker, names in _read_table(table or DEFAULT_ALIAS_TABLE):
            self._add(ticker, names)
        self._fuzzy_choices = [key for key in self._candidates if len(key) >= FUZZY_MIN_LENGTH]

    @property
    def tickers(self) -> frozenset[str]:
        return frozenset(self._tickers)

    def _add(self, ticker: str, names: Iterable[str]) -> None:
        self._tickers.add(ticker)
        for name in names:
            key = _lookup_key(name)
            if not key:
                continue
            candidates = self._candidates.setdefault(key, [])
            if ticker not in candidates:
                candidates.append(ticker)

    def link(self, entity: str, hints: tuple[str, ...] = ()) -> str | None:
        """Ticker for `entity`, or None when it names no known company.

        `hints` (tickers of the feed the article came from) pick among companies sharing a name,
        e.g. Alphabet class A/C, and give hinted candidates a small edge in fuzzy matching.
        """
        hinted = {hint.strip().upper() for hint in hints}
        explicit = self._explicit_symbol(entity)
        if explicit:
            return explicit
        key = _lookup_key(entity)
        # A lowercase single word ("apple", "target") is a common noun, not a company name.
        if not key or (" " not in key and entity.lower() == entity):
            return None
        if key in self._candidates:
            return _prefer(self._candidates[key], hinted)
        bare = entity.strip().replace(".", "-")  # BRK.B is written BRK-B in the table
        if len(bare) >= 2 and bare in self._tickers and bare not in WORD_TICKERS:
            return bare
        return self._fuzzy(key, hinted)

    def _explicit_symbol(self, entity: str) -> str | None:
        if match := _RIC.search(entity):
            return self._ric_ticker(match["root"], match["exchange"])
        if match := _EXCHANGE_PREFIXED.search(entity) or _CASHTAG.match(entity.strip()):
            return match["symbol"].upper()
        return None

    def _ric_ticker(self, root: str, exchange: str | None) -> str | None:
        # Reuters writes share classes in lowercase: <BRKb.N> is Berkshire class B (BRK-B).
        if len(root) > 1 and root[-1].islower() and root[:-1].isupper():
            root = f"{root[:-1]}-{root[-1]}"
        root = root.upper()
        if exchange is None or exchange.upper() in US_RIC_EXCHANGES:
            return root
        listed = f"{root}.{exchange.upper()}"
        return listed if listed in self._tickers else None

    def _fuzzy(self, key: str, hinted: set[str]) -> str | None:
        if len(key) < FUZZY_MIN_LENGTH:
            return None
        cutoff = self.min_score - HINT_BONUS if hinted else self.min_score
        best: tuple[float, str] | None = None
        for alias, score, _ in process.extract(
            key, self._fuzzy_choices, scorer=fuzz.token_sort_ratio, limit=5, score_cutoff=cutoff
        ):
            ticker = _prefer(self._candidates[alias], hinted)
            adjusted = score + HINT_BONUS if ticker in hinted else score
            if adjusted >= self.min_score and (best is None or adjusted > best[0]):
                best = (adjusted, ticker)
        return best[1] if best else None


def _lookup_key(name: str) -> str:
    key = normalize_name(name)
    return normalize_name(name, strip_suffixes=False) if key in GENERIC_NAMES else key


def _prefer(candidates: list[str], hinted: set[str]) -> str:
    return next((ticker for ticker in candidates if ticker in hinted), candidates[0])


def _checked_extra_aliases(extra_aliases: Mapping[str, str]) -> list[tuple[str, str]]:
    checked = []
    for alias, ticker in extra_aliases.items():
        symbol = str(ticker).strip().upper()
        if not normalize_name(str(alias)):
            raise AliasTableError(f"extra alias {alias!r} (for {ticker!r}) has no letters or digits")
        if not _TICKER.match(symbol):
            raise AliasTableError(f"extra alias {alias!r}: {ticker!r} is not a ticker symbol")
        checked.append((str(alias), symbol))
    return checked


def _read_table(path: Path) -> list[tuple[str, list[str]]]:
    """Rows of (ticker, [name, *aliases]) from the CSV; '#' lines are comments."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise AliasTableError(f"cannot read alias table {path}: {exc.strerror}") from exc
    rows: list[tuple[str, list[str]]] = []
    first_line: dict[str, int] = {}
    header_seen = False
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [field.strip() for field in next(csv.reader([line]))]
        if not header_seen:
            if fields != ["ticker", "name", "aliases"]:
                raise AliasTableError(f"{path}:{lineno}: expected header 'ticker,name,aliases', got {line!r}")
            header_seen = True
            continue
        if len(fields) != 3:
            raise AliasTableError(f"{path}:{lineno}: expected 3 fields (ticker,name,aliases), got {len(fields)}")
        ticker, name, aliases = fields
        if not _TICKER.match(ticker):
            raise AliasTableError(f"{path}:{lineno}: {ticker!r} is not an upper-case ticker symbol")
        if not name:
            raise AliasTableError(f"{path}:{lineno}: ticker {ticker} has no name")
        if ticker in first_line:
            raise AliasTableError(f"{path}:{lineno}: ticker {ticker} already listed on line {first_line[ticker]}")
        first_line[ticker] = lineno
        rows.append((ticker, [name, *(alias.strip() for alias in aliases.split("|") if alias.strip())]))
    if not rows:
        raise AliasTableError(f"{path}: no rows (expected a 'ticker,name,aliases' header and one row per ticker)")
    return rows
