"""Deterministic synthetic datasets in the UCI Online Retail schema, with known customer segments.

Why: the real file has one fixed size and no ground truth. A generated file of any size, with the
real file's quirks (C-invoices reversing earlier purchases, anonymous invoices, heavy-tailed
quantities and prices, UK dominance, chronological order) and a side file holding each customer's
true segment, lets the stream be replayed at scale and lets training be checked against the truth.

The segments sit apart in the *linear* feature space (TotalQuantity, TotalAmount, NumInvoices),
because that is where KMeans on standard-scaled features looks: loyal customers stand out on
invoices, wholesale on quantity, premium on amount, occasional near the origin. (A one-off
segment beside the occasional one would be a different segment only in log terms: after linear
scaling the two are one blob.) Outliers and zero prices go on anonymous lines, which cleaning
drops, so they add realism without moving customers.

Everything is vectorised with numpy and drawn from one seeded generator, so the same (rows, seed)
gives the same bytes.

    python -m pipelines.generate [--rows N] [--seed S] [--output PATH]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data.schema import COLUMNS

DEFAULT_ROWS = 541_909
DEFAULT_SEED = 7
MIN_ROWS = 200

# Proportions of the real file: 4,372 customers and ~25,900 invoices in 541,909 lines.
_CUSTOMERS_PER_ROW = 4_372 / DEFAULT_ROWS
_ANONYMOUS_SHARE = 0.25  # of lines: no CustomerID, on whole invoices
_CANCELLED_SHARE = 0.02  # of lines: on C-invoices
_LINES_PER_ANONYMOUS_INVOICE = 36
_LINES_PER_CANCELLATION = 2.8
_OUTLIERS_PER_ROW = 1 / 100_000  # huge-quantity lines, and as many huge-price ones
_ZERO_PRICE_SHARE = 0.005  # of anonymous lines: price 0 and no description, as in the real file

_FIRST_DAY = np.datetime64("2010-12-01")
_LAST_DAY = np.datetime64("2011-12-09")
_FIRST_INVOICE = 536_365
_FIRST_CUSTOMER_ID = 12_346  # the real IDs run 12346..18287


@dataclass(frozen=True)
class Segment:
    """How one kind of customer buys over the year."""

    name: str
    share: float  # of customers
    min_invoices: int
    extra_invoices: float  # Poisson mean on top of min_invoices
    lines: float  # median order lines per customer-year (relative: rescaled to the row count)
    quantity: float  # median Quantity of one line
    price_band: tuple[float, float]  # quantiles of catalogue prices the segment buys from


SEGMENTS: tuple[Segment, ...] = (
    Segment("occasional", 0.63, 1, 0.7, 30, 6, (0.0, 0.9)),
    Segment("loyal", 0.11, 14, 4.0, 300, 6, (0.0, 0.9)),
    Segment("wholesale", 0.08, 3, 1.0, 200, 60, (0.0, 0.3)),
    Segment("premium", 0.18, 3, 1.0, 400, 3, (0.9, 0.99)),
)
_ANONYMOUS_BUYER = Segment("anonymous", 0.0, 0, 0.0, 0, 2, (0.0, 1.0))  # shop-floor baskets
_CUSTOMER_SPREAD = 0.2  # lognormal sigma of a customer's volume around its segment's median
_LINE_SPREAD = 0.8  # lognormal sigma of one line's quantity

# (country, customers in the real file): UK dominant, 38 countries.
COUNTRIES: tuple[tuple[str, int], ...] = (
    ("United Kingdom", 3950), ("Germany", 95), ("France", 87), ("Spain", 31), ("Belgium", 25),
    ("Switzerland", 21), ("Portugal", 19), ("Italy", 15), ("Finland", 12), ("Austria", 11),
    ("Norway", 10), ("Netherlands", 9), ("Australia", 9), ("Channel Islands", 9), ("Denmark", 9),
    ("Cyprus", 8), ("Sweden", 8), ("Japan", 8), ("Poland", 6), ("USA", 4), ("Canada", 4),
    ("Unspecified", 4), ("Israel", 4), ("Greece", 4), ("EIRE", 3), ("Bahrain", 2), ("Malta", 2),
    ("United Arab Emirates", 2), ("Iceland", 1), ("Lithuania", 1), ("Czech Republic", 1),
    ("Singapore", 1), ("Lebanon", 1), ("RSA", 1), ("Saudi Arabia", 1), ("Hong Kong", 1),
    ("Brazil", 1), ("European Community", 1),
)  # fmt: skip
_COUNTRY_NAMES = np.array([name for name, _ in COUNTRIES], dtype=object)
_COUNTRY_P = np.array([n for _, n in COUNTRIES]) / sum(n for _, n in COUNTRIES)

_PRODUCTS = 4_000
_SPECIAL_PRODUCTS = (
    ("POST", "POSTAGE", 18.0),
    ("DOT", "DOTCOM POSTAGE", 11.17),
    ("C2", "CARRIAGE", 50.0),
    ("M", "Manual", 2.55),
)
# Descriptions are [prefix ]colour motif item, like "JUMBO PINK DOLLY GIRL LUNCH BAG".
# fmt: off
_PREFIXES = ("", "", "", "SET OF 3 ", "SET OF 6 ", "PACK OF 12 ", "SMALL ", "LARGE ", "JUMBO ")
_COLOURS = ("WHITE", "RED", "PINK", "BLUE", "GREEN", "IVORY", "CREAM", "BLACK", "SILVER", "GOLD",
            "PAISLEY", "RETROSPOT", "POLKADOT", "VINTAGE", "ANTIQUE", "SPOTTY", "STRIPEY", "FLORAL")
_MOTIFS = ("HANGING HEART", "CHRISTMAS", "REGENCY", "DOLLY GIRL", "SKULL", "UNION JACK", "BIRD",
           "ROSE", "STAR", "LOVE", "FAIRY CAKE", "ENGLISH", "PARTY", "GARDEN", "WOODLAND",
           "BAROQUE", "SCANDINAVIAN", "KITCHEN")
_ITEMS = ("T-LIGHT HOLDER", "LANTERN", "COAT HANGER", "HOT WATER BOTTLE", "TEA SET", "LUNCH BAG",
          "JUMBO BAG", "CAKE STAND", "MUG", "ALARM CLOCK", "PHOTO FRAME", "CUSHION COVER",
          "DOORSTOP", "BUNTING", "NAPKINS", "CANDLE", "TEACUP AND SAUCER", "PICNIC BASKET",
          "STORAGE TIN", "WALL ART", "NOTEBOOK", "GIFT WRAP", "PURSE", "DOORMAT",
          "HANGING ORNAMENT", "PAPER CHAIN KIT", "CHOPPING BOARD", "RIBBONS", "SIGN", "TRINKET BOX")
# fmt: on


@dataclass(frozen=True)
class _Catalogue:
    codes: np.ndarray  # StockCode (object)
    descriptions: np.ndarray  # Description (object)
    prices: np.ndarray  # float64
    popularity: np.ndarray  # float64, sums to 1


@dataclass(frozen=True)
class _Invoices:
    """One entry per invoice (customers' purchases first, then anonymous ones)."""

    sizes: np.ndarray  # lines
    times: np.ndarray  # datetime64[m]
    customer: np.ndarray  # index into the customers, -1 when anonymous
    country: np.ndarray  # index into COUNTRIES
    buyer: np.ndarray  # index into SEGMENTS; len(SEGMENTS) for the anonymous buyer


@dataclass(frozen=True)
class _Lines:
    """One entry per purchase line, in invoice order."""

    invoice: np.ndarray
    product: np.ndarray
    description: np.ndarray  # the product's, blanked on zero-price lines
    quantity: np.ndarray  # int64, positive
    price: np.ndarray  # float64


def _catalogue(rng: np.random.Generator) -> _Catalogue:
    """Products with UCI-like codes (85123A), descriptions, heavy-tailed prices, Zipf popularity."""
    numbers = rng.choice(np.arange(10_000, 90_000), size=_PRODUCTS, replace=False)
    suffixes = np.where(
        rng.random(_PRODUCTS) < 0.12, rng.choice(list("ABCDEFGLPSW"), _PRODUCTS), ""
    )
    words = [rng.integers(0, len(w), _PRODUCTS) for w in (_PREFIXES, _COLOURS, _MOTIFS, _ITEMS)]
    # A few descriptions carry a comma (quoted in the CSV) or the real file's trailing space.
    endings = rng.choice([", ASSORTED", " ", ""], size=_PRODUCTS, p=[0.02, 0.05, 0.93])
    descriptions = [
        f"{_PREFIXES[p]}{_COLOURS[c]} {_MOTIFS[m]} {_ITEMS[i]}{end}"
        for p, c, m, i, end in zip(*words, endings, strict=True)
    ]
    prices = np.round(np.clip(rng.lognormal(np.log(2.1), 0.85, _PRODUCTS), 0.1, None), 2)
    luxury = rng.random(_PRODUCTS) < 0.005
    prices[luxury] = np.round(prices[luxury] * rng.uniform(20, 60, luxury.sum()), 2)

    codes = [f"{n}{s}" for n, s in zip(numbers, suffixes, strict=True)]
    codes += [code for code, _, _ in _SPECIAL_PRODUCTS]
    descriptions += [text for _, text, _ in _SPECIAL_PRODUCTS]
    prices = np.concatenate([prices, [price for _, _, price in _SPECIAL_PRODUCTS]])
    popularity = 1.0 / (rng.permutation(len(codes)) + 10.0) ** 0.9
    return _Catalogue(
        np.array(codes, dtype=object),
        np.array(descriptions, dtype=object),
        prices,
        popularity / popularity.sum(),
    )


def _is_saturday(when: np.ndarray) -> np.ndarray:
    """The real file has no Saturday trading. (1970-01-01, day 0, was a Thursday.)"""
    return (when.astype("datetime64[D]").astype("int64") + 3) % 7 == 5


def _invoice_times(rng: np.random.Generator, n: int) -> np.ndarray:
    """Minutes over one trading year: no Saturdays, busier before Christmas, peak around noon."""
    days = np.arange(_FIRST_DAY, _LAST_DAY + 1)
    days = days[~_is_saturday(days)]
    age = (days - _FIRST_DAY).astype("float64")
    weights = 1.0 + 1.5 * np.exp(-(((age - 349.0) / 35.0) ** 2))  # day 349: mid-November 2011
    day = rng.choice(days, size=n, p=weights / weights.sum())
    minute = np.clip(rng.normal(12.5 * 60, 130, n), 7 * 60, 20 * 60 - 1).astype("int64")
    return day.astype("datetime64[m]") + minute.astype("timedelta64[m]")


def _cancellation_times(rng: np.random.Generator, purchased: np.ndarray) -> np.ndarray:
    """A few days after the purchase, in trading hours, never on a Saturday or after the year."""
    days_left = (_LAST_DAY - purchased.astype("datetime64[D]")).astype("int64")
    days = np.minimum(rng.geometric(0.4, len(purchased)) - 1, days_left)
    minutes = days * 24 * 60 + rng.integers(1, 30, len(purchased))
    when = purchased + minutes.astype("timedelta64[m]")
    return when - np.where(_is_saturday(when), 24 * 60, 0).astype("timedelta64[m]")


def _split(rng: np.random.Generator, total: int, weights: np.ndarray) -> np.ndarray:
    """`total` lines over len(weights) invoices: at least one each, the rest in proportion."""
    return 1 + rng.multinomial(total - len(weights), weights / weights.sum())


def _purchase_invoices(
    rng: np.random.Generator, rows: int, customer_lines: int, anonymous_lines: int
) -> tuple[_Invoices, np.ndarray, np.ndarray]:
    """Customers (segment, country, invoices, yearly volume) and their and anonymous invoices.

    Returns the invoices, each customer's segment index and each customer's ID text.
    """
    n = max(len(SEGMENTS), round(rows * _CUSTOMERS_PER_ROW))
    shares = np.array([s.share for s in SEGMENTS])
    segment = rng.choice(len(SEGMENTS), size=n, p=shares / shares.sum())
    id_range = np.arange(_FIRST_CUSTOMER_ID, _FIRST_CUSTOMER_ID + max(5_942, 2 * n))
    ids = rng.choice(id_range, size=n, replace=False)
    country = rng.choice(len(COUNTRIES), size=n, p=_COUNTRY_P)
    covered = rng.permutation(n)[: len(COUNTRIES)]  # every country has a customer, as in reality
    country[covered] = np.arange(len(covered))
    minimum = np.array([s.min_invoices for s in SEGMENTS])
    extra = np.array([s.extra_invoices for s in SEGMENTS])
    lines = np.array([s.lines for s in SEGMENTS])
    n_invoices = minimum[segment] + rng.poisson(extra[segment])
    volume = lines[segment] * rng.lognormal(0.0, _CUSTOMER_SPREAD, n)

    owner = np.repeat(np.arange(n), n_invoices)
    n_anonymous = max(1, round(anonymous_lines / _LINES_PER_ANONYMOUS_INVOICE))
    sizes = np.concatenate(
        [
            _split(rng, customer_lines, (volume / n_invoices)[owner]),
            _split(rng, anonymous_lines, rng.lognormal(0.0, 0.6, n_anonymous)),
        ]
    )
    invoices = _Invoices(
        sizes=sizes,
        times=_invoice_times(rng, len(sizes)),
        customer=np.concatenate([owner, np.full(n_anonymous, -1)]),
        country=np.concatenate(
            [country[owner], rng.choice(len(COUNTRIES), n_anonymous, p=_COUNTRY_P)]
        ),
        buyer=np.concatenate([segment[owner], np.full(n_anonymous, len(SEGMENTS))]),
    )
    return invoices, segment, np.array([str(i) for i in ids], dtype=object)


def _purchase_lines(
    rng: np.random.Generator, catalogue: _Catalogue, invoices: _Invoices, rows: int
) -> _Lines:
    """Each buyer picks products in its price band by popularity, in lognormal quantities."""
    invoice = np.repeat(np.arange(len(invoices.sizes)), invoices.sizes)
    buyer = invoices.buyer[invoice]
    product = np.empty(len(invoice), dtype="int64")
    median_quantity = np.empty(len(invoice))
    for index, segment in enumerate((*SEGMENTS, _ANONYMOUS_BUYER)):
        mask = buyer == index
        low, high = np.quantile(catalogue.prices, segment.price_band)
        in_band = (catalogue.prices >= low) & (catalogue.prices <= high)
        cumulative = np.cumsum(np.where(in_band, catalogue.popularity, 0.0))
        draws = rng.random(int(mask.sum())) * cumulative[-1]
        product[mask] = np.searchsorted(cumulative, draws, side="right").clip(max=len(in_band) - 1)
        median_quantity[mask] = segment.quantity
    noise = rng.lognormal(0.0, _LINE_SPREAD, len(invoice))
    quantity = np.maximum(1, np.rint(median_quantity * noise)).astype("int64")
    price = catalogue.prices[product]  # a copy: outliers below stay on their lines
    description = catalogue.descriptions[product]

    anonymous = np.flatnonzero(buyer == len(SEGMENTS))
    outliers = rng.choice(anonymous, (2, max(1, round(rows * _OUTLIERS_PER_ROW))), replace=False)
    heavy = 1 + rng.pareto(1.2, outliers.shape)
    quantity[outliers[0]] = np.rint(1_000 * heavy[0]).clip(max=80_995).astype("int64")
    price[outliers[1]] = np.round(500 * heavy[1], 2).clip(max=38_970)
    zero_price = anonymous[rng.random(len(anonymous)) < _ZERO_PRICE_SHARE]
    price[zero_price] = 0.0
    description[zero_price] = ""
    return _Lines(invoice, product, description, quantity, price)


def generate_dataset(
    rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Transactions (schema.COLUMNS, the loader's dtypes, chronological) and customers' segments.

    The second frame has CustomerID and Segment (a SEGMENTS name), one row per customer.
    """
    if rows < MIN_ROWS:
        raise ValueError(f"rows must be at least {MIN_ROWS}, got {rows}")
    rng = np.random.default_rng(seed)
    catalogue = _catalogue(rng)
    anonymous_lines = round(rows * _ANONYMOUS_SHARE)
    cancelled_lines = round(rows * _CANCELLED_SHARE)
    customer_lines = rows - anonymous_lines - cancelled_lines
    purchases, segment, customer_ids = _purchase_invoices(
        rng, rows, customer_lines, anonymous_lines
    )
    lines = _purchase_lines(rng, catalogue, purchases, rows)

    # Cancellations: a customer's later C-invoice reversing lines of one of its purchases.
    n_cancelled = round(cancelled_lines / _LINES_PER_CANCELLATION)
    origin = rng.choice(np.flatnonzero(purchases.customer >= 0), n_cancelled)
    cancel_sizes = _split(rng, cancelled_lines, np.ones(n_cancelled))
    cancel_origin = np.repeat(origin, cancel_sizes)
    first_line = np.cumsum(purchases.sizes) - purchases.sizes
    offset = rng.random(len(cancel_origin)) * purchases.sizes[cancel_origin]
    reversed_line = first_line[cancel_origin] + offset.astype("int64")
    cancel_times = _cancellation_times(rng, purchases.times[origin])

    # Invoices in chronological order, numbered like the real file with C on cancellations.
    times = np.concatenate([purchases.times, cancel_times])
    customer = np.concatenate([purchases.customer, purchases.customer[origin]])
    country = np.concatenate([purchases.country, purchases.country[origin]])
    is_cancellation = np.arange(len(times)) >= len(purchases.times)
    rank = np.empty(len(times), dtype="int64")
    rank[np.argsort(times, kind="stable")] = np.arange(len(times))
    gaps = np.concatenate([[0], 1 + rng.poisson(0.75, len(times) - 1)])
    numbers = (_FIRST_INVOICE + np.cumsum(gaps))[rank]
    invoice_no = np.array(
        [f"C{n}" if c else str(n) for n, c in zip(numbers, is_cancellation, strict=True)],
        dtype=object,
    )

    # Lines follow their invoices; a cancellation line is its reversed purchase line, negated.
    invoice = np.concatenate(
        [lines.invoice, len(purchases.times) + np.repeat(np.arange(n_cancelled), cancel_sizes)]
    )
    source = np.concatenate([np.arange(len(lines.invoice)), reversed_line])
    order = np.argsort(rank[invoice], kind="stable")
    invoice, source = invoice[order], source[order]
    buyer = customer[invoice]
    frame = pd.DataFrame(
        {
            "InvoiceNo": invoice_no[invoice],
            "StockCode": catalogue.codes[lines.product[source]],
            "Description": lines.description[source],
            "Quantity": np.where(is_cancellation[invoice], -1, 1) * lines.quantity[source],
            "InvoiceDate": times[invoice].astype("datetime64[ns]"),
            "UnitPrice": lines.price[source],
            "CustomerID": np.where(buyer >= 0, customer_ids[buyer], None),
            "Country": _COUNTRY_NAMES[country[invoice]],
        },
        columns=list(COLUMNS),
    )
    names = np.array([s.name for s in SEGMENTS], dtype=object)
    by_id = np.argsort(customer_ids.astype("int64"))
    segments = pd.DataFrame({"CustomerID": customer_ids[by_id], "Segment": names[segment[by_id]]})
    return frame, segments


def _quote(text: str) -> str:
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _price(value: float) -> str:
    text = repr(float(value))
    return text.removesuffix(".0")


def _date(value: pd.Timestamp) -> str:
    return f"{value.month}/{value.day}/{value.year} {value.hour}:{value.minute:02d}"


_FORMATS: dict[str, Callable] = {
    "Quantity": str,
    "InvoiceDate": _date,
    "UnitPrice": _price,
}


def _render(column: pd.Series, fmt: Callable) -> np.ndarray:
    """A column as CSV fields, formatting each distinct value once (few distinct, many rows)."""
    codes, uniques = pd.factorize(column)
    fields = np.array([fmt(value) for value in uniques] + [""], dtype=object)
    return fields[codes]  # code -1 (missing) picks the trailing ""


def _write_atomically(path: Path, text: str) -> None:
    """Written beside the target, then renamed over it: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(text.encode("utf-8"))
    os.replace(partial, path)


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write transactions the way the real file looks (12/1/2010 8:26, quotes only where needed)."""
    fields = [_render(frame[name], _FORMATS.get(name, _quote)) for name in COLUMNS]
    lines = map(",".join, zip(*fields, strict=True))
    _write_atomically(path, ",".join(COLUMNS) + "\n" + "\n".join(lines) + "\n")
    return path


def segments_path(path: Path) -> Path:
    """The side file of a dataset: online_retail.csv -> online_retail.segments.csv."""
    return path.with_name(f"{path.stem}.segments.csv")


def write_files(path: Path, frame: pd.DataFrame, segments: pd.DataFrame) -> None:
    write_csv(frame, path)
    _write_atomically(segments_path(path), segments.to_csv(index=False, lineterminator="\n"))


def write_dataset(path: Path, rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> Path:
    """Generate and write the transactions CSV plus its segments side file; returns the CSV path."""
    write_files(path, *generate_dataset(rows, seed))
    return path
