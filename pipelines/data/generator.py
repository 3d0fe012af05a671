"""Deterministic synthetic datasets in the UCI Online Retail schema, with known customer segments.

Why: the real file has one fixed size and no ground truth. A generated file of any size, with the
real file's quirks and a side file holding each customer's true segment, lets the stream be
replayed at scale and lets training be checked against the truth.

Rows keep the real file's proportions at any size (541,909 rows by default, as the real file):
a quarter of the lines without a customer, on whole invoices (shop-floor baskets, and one-line
stock write-offs with a negative quantity at price 0, most without a description); C-invoices
reversing lines of a customer's earlier purchase (1.7% of lines); free lines; about 1% exact
duplicate lines; no Saturday trading; UK dominance. The real file's extremes are planted once
each: an order of 80,995 cancelled minutes later (on a wholesale customer), a 38,970 "Manual"
line, and three "Adjust bad debt" A-invoices, two of them at a negative price.

Customers are what training sees, and real customers are heavy-tailed. After cleaning, the median
one bought 379 items on 2 invoices for 675, the top 1% more than 11,000 items, the top 0.1% more
than 70,000, and each feature's skewness is 12 to 20. Four latent segments make that shape:

    occasional  42%  one order a year (a few two), about 100 items at gift-shop prices
    regular     37%  about 4 orders, several hundred items
    loyal       16%  the high-value core: about 15 orders and 2,000 items, with a Pareto tail of
                     top accounts (100+ orders, 100,000+ spent)
    wholesale    5%  one or two bulk orders of thousands of the cheapest items; a Pareto tail

Each customer has a size, lognormal around its segment's median and, for loyal and wholesale
customers, Pareto above it (truncated at _TAIL_CAP times the median: big accounts are big, not
unbounded). Size raises both the invoice count and the quantity per line, since big accounts
order more often and more at a time; each also has lognormal noise of its own. So in linear space
the segments overlap and a few giants dominate: standard-scaled raw features put nearly everyone
in one cluster. The segment medians sit far apart on a log scale (about 1 : 6 : 20 in quantity,
invoices 1 : 4 : 15), so in log space the segments are compact blobs, apart but for their
tails, which is what a tail-robust recipe sees (signed log1p of the three totals, standard
scaling, KMeans; silhouette may split the loyal top accounts off as a fifth group). Checked in
tests/data/test_generate.py against the real file's published figures and that recipe.

Customers' sizes are their segment distribution's quantiles, dealt out at random (`_quantiles`),
so every seed gives the tail its design shape rather than one lucky maximum.
Everything is vectorised with numpy and drawn from one seeded generator, so the same (rows, seed)
gives the same bytes. One module of ~650 lines on purpose: its parts (customers, purchases,
oddities, cancellations, rendering) share the one random stream in a fixed order, and reading them
top to bottom is reading how the dataset is made; split, the order that makes it deterministic
would be spread over files.

    python -m pipelines.generate [--rows N] [--seed S] [--output PATH]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import ndtri

from pipelines.data.schema import COLUMNS

DEFAULT_ROWS = 541_909
DEFAULT_SEED = 7
MIN_ROWS = 200

# Row-level proportions of the real file (541,909 lines), so that any size keeps its shape.
_CUSTOMERS_PER_ROW = 4_372 / DEFAULT_ROWS
_ANONYMOUS_SHARE = 135_080 / DEFAULT_ROWS  # of lines: no CustomerID, on whole invoices
_CANCELLED_SHARE = 9_288 / DEFAULT_ROWS  # of lines: on C-invoices (3,836 of them)
_LINES_PER_CANCELLATION = 9_288 / 3_836
_LINES_PER_ANONYMOUS_INVOICE = 100  # baskets; with the segments, gives the real invoice count
_ADJUSTMENT_SHARE = 1_336 / DEFAULT_ROWS  # of lines: negative quantity at price 0, not cancelled
_FREE_SHARE = 1_139 / DEFAULT_ROWS  # of lines: anonymous basket lines at price 0
_UNDESCRIBED = 1_454 / 2_475  # of the anonymous price-0 lines: no Description
_CUSTOMER_FREE_SHARE = 40 / DEFAULT_ROWS  # of lines: a customer's line at price 0
_DUPLICATE_SHARE = 0.0007  # of purchase lines: the previous line again (chance adds the rest)
_OUTLIERS_PER_ROW = 1 / 100_000  # anonymous huge-quantity lines, and as many huge-price ones

# The real file's extremes, planted once each: an order of 80,995 cancelled minutes later, a
# 38,970 "Manual" line, and "Adjust bad debt" A-invoices in August 2011, two at a negative price.
_LARGEST_ORDER = 80_995
_LARGEST_PRICE = 38_970.0
_BAD_DEBT = 11_062.06
_BAD_DEBT_TIMES = ("2011-08-12T14:50", "2011-08-12T14:51", "2011-08-12T14:52")
_BAD_DEBT_SIGNS = (1, -1, -1)
_LINE_CAP = 10_000  # on drawn lines' quantities: the planted order stays the largest

_FIRST_DAY = np.datetime64("2010-12-01")
_LAST_DAY = np.datetime64("2011-12-09")
_FIRST_INVOICE = 536_365
_FIRST_CUSTOMER_ID = 12_346  # the real IDs run 12346..18287


@dataclass(frozen=True)
class Segment:
    """How one kind of customer buys over the year.

    Each customer has a size around 1: lognormal below the median and, with a tail index, Pareto
    above it (a few customers many times the median), else lognormal on both sides. Its invoices
    grow as size ** invoices_share and its typical line quantity as the rest of the size, each
    with some lognormal noise of its own; its lines per invoice are lognormal around `lines`.
    """

    name: str
    share: float  # of customers
    invoices: float  # median invoices in the year
    lines: float  # median lines per invoice (relative: rescaled to the row count)
    quantity: float  # median of a customer's typical Quantity per line
    size_sigma: float  # lognormal sigma of the size below the median (and above, without tail)
    size_tail: float  # Pareto index of the size above the median; 0 for none
    invoices_share: float  # of the size's logarithm that goes to invoices
    price_band: tuple[float, float]  # quantiles of catalogue prices the segment buys from


# name, share, medians of invoices, lines per invoice and quantity per line, size (sigma, tail),
# invoices' share of size, price band. The medians are far apart on a log scale: see the module
# docstring.
SEGMENTS: tuple[Segment, ...] = (
    Segment("occasional", 0.42, 1.1, 12, 6.0, 0.20, 0.0, 0.5, (0.2, 0.97)),
    Segment("regular", 0.37, 3.8, 18, 7.0, 0.20, 0.0, 0.5, (0.0, 0.8)),
    Segment("loyal", 0.16, 14.0, 18, 5.5, 0.20, 1.15, 0.5, (0.0, 0.85)),
    Segment("wholesale", 0.05, 1.3, 15, 160.0, 0.30, 1.5, 0.2, (0.0, 0.3)),
)
_WHOLESALE = [s.name for s in SEGMENTS].index("wholesale")  # gets the largest order
_ANONYMOUS_QUANTITY = 2.0  # shop-floor baskets
_ANONYMOUS_BAND = (0.0, 1.0)
_TAIL_CAP = 150.0  # no customer is more than this many times its segment's median size
_CUSTOMER_NOISE = 0.12  # lognormal sigma of invoices, quantity, lines per invoice, given the size
_BASKET_SPREAD = 0.15  # lognormal sigma of one invoice's size around the customer's typical one
_LINE_SPREAD = 0.7  # lognormal sigma of one line's quantity around the customer's typical one

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
_UK = 0

_PRODUCTS = 4_000
_SPECIAL_PRODUCTS = (
    ("POST", "POSTAGE", 18.0),
    ("DOT", "DOTCOM POSTAGE", 11.17),
    ("C2", "CARRIAGE", 50.0),
    ("M", "Manual", 2.55),
)
_MANUAL = _PRODUCTS + 3  # index of "M" in the catalogue
_BAD_DEBT_PRODUCT = ("B", "Adjust bad debt")  # never bought: only on the A-invoices
# How the real file describes stock written off (the rest of those lines have no description).
_ADJUSTMENT_NOTES = ("damaged", "check", "?", "missing", "lost", "wet damaged", "found", "smashed")
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
class _Customers:
    segment: np.ndarray  # index into SEGMENTS
    ids: np.ndarray  # CustomerID text
    country: np.ndarray  # index into COUNTRIES
    invoices: np.ndarray  # purchase invoices in the year
    lines: np.ndarray  # typical lines per invoice, before rescaling to the row count
    quantity: np.ndarray  # typical Quantity of a line


@dataclass(frozen=True)
class _Invoices:
    """One entry per invoice, in no particular order."""

    times: np.ndarray  # datetime64[m]
    customer: np.ndarray  # index into the customers, -1 when anonymous
    country: np.ndarray  # index into COUNTRIES
    prefix: np.ndarray  # "", "C" (cancellation) or "A" (bad-debt adjustment)


@dataclass(frozen=True)
class _Lines:
    """One entry per line; `invoice` indexes the invoices."""

    invoice: np.ndarray
    product: np.ndarray  # index into the catalogue
    description: np.ndarray  # object
    quantity: np.ndarray  # int64
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
    codes += [code for code, _, _ in _SPECIAL_PRODUCTS] + [_BAD_DEBT_PRODUCT[0]]
    descriptions += [text for _, text, _ in _SPECIAL_PRODUCTS] + [_BAD_DEBT_PRODUCT[1]]
    prices = np.concatenate([prices, [price for _, _, price in _SPECIAL_PRODUCTS], [_BAD_DEBT]])
    popularity = 1.0 / (rng.permutation(len(codes)) + 10.0) ** 0.9
    popularity[-1] = 0.0  # bad debt is not for sale
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


def _quantiles(rng: np.random.Generator, segment: np.ndarray) -> np.ndarray:
    """Within each segment the quantile levels (i + 1/2)/m, i = 0..m-1, dealt out at random.

    Customers' sizes are the segment distribution at these levels: m customers then carry its
    whole shape, tail included, instead of a draw whose few largest values swing a file's top
    customers by a factor of ten from one seed to the next.
    """
    levels = np.empty(len(segment))
    for index in range(len(SEGMENTS)):
        members = np.flatnonzero(segment == index)
        levels[members] = (rng.permutation(len(members)) + 0.5) / max(1, len(members))
    return levels


def _size(level: np.ndarray, sigma: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """The quantile `level` of: lognormal below 1; above it Pareto with index `tail`, truncated
    at _TAIL_CAP, or lognormal on both sides where `tail` is 0."""
    alpha = np.where(tail > 0, tail, 1.0)
    above = np.clip(2.0 * level - 1.0, 0.0, None)  # the level within the upper half
    pareto = -np.log1p(-above * (1.0 - _TAIL_CAP**-alpha)) / alpha
    lognormal = sigma * ndtri(level)
    return np.exp(np.where((level > 0.5) & (tail > 0), pareto, lognormal))


def _customers(rng: np.random.Generator, n: int) -> _Customers:
    """Each customer's segment, ID, country and yearly behaviour, drawn around its segment's."""
    shares = np.array([s.share for s in SEGMENTS])
    counts = np.floor(shares / shares.sum() * n).astype("int64")
    counts[np.argsort(counts - shares / shares.sum() * n)[: n - counts.sum()]] += 1
    segment = rng.permutation(np.repeat(np.arange(len(SEGMENTS)), counts))
    id_range = np.arange(_FIRST_CUSTOMER_ID, _FIRST_CUSTOMER_ID + max(5_942, 2 * n))
    ids = rng.choice(id_range, size=n, replace=False)
    country = rng.choice(len(COUNTRIES), size=n, p=_COUNTRY_P)
    covered = rng.permutation(n)[: len(COUNTRIES)]  # every country has a customer, as in reality
    country[covered] = np.arange(len(covered))

    def column(name: str) -> np.ndarray:
        return np.array([getattr(s, name) for s in SEGMENTS], dtype="float64")[segment]

    size = _size(_quantiles(rng, segment), column("size_sigma"), column("size_tail"))
    share = column("invoices_share")
    noise = rng.lognormal(0.0, _CUSTOMER_NOISE, (3, n))
    invoices = column("invoices") * size**share * noise[0]
    return _Customers(
        segment=segment,
        ids=np.array([str(i) for i in ids], dtype=object),
        country=country,
        invoices=np.maximum(1, np.rint(invoices)).astype("int64"),
        lines=column("lines") * noise[1],
        quantity=column("quantity") * size ** (1.0 - share) * noise[2],
    )


def _pick_products(
    rng: np.random.Generator, catalogue: _Catalogue, band: tuple[float, float], n: int
) -> np.ndarray:
    """`n` products by popularity among those priced within the band's quantiles."""
    low, high = np.quantile(catalogue.prices[:_PRODUCTS], band)
    in_band = (catalogue.prices >= low) & (catalogue.prices <= high)
    cumulative = np.cumsum(np.where(in_band, catalogue.popularity, 0.0))
    draws = rng.random(n) * cumulative[-1]
    return np.searchsorted(cumulative, draws, side="right").clip(max=len(in_band) - 1)


def _purchases(
    rng: np.random.Generator,
    catalogue: _Catalogue,
    customers: _Customers,
    customer_lines: int,
    anonymous_lines: int,
) -> tuple[_Invoices, _Lines]:
    """Customers' and anonymous purchase invoices and their lines, in invoice order."""
    owner = np.repeat(np.arange(len(customers.segment)), customers.invoices)
    n_anonymous = max(1, round(anonymous_lines / _LINES_PER_ANONYMOUS_INVOICE))
    weights = customers.lines[owner] * rng.lognormal(0.0, _BASKET_SPREAD, len(owner))
    sizes = np.concatenate(
        [
            _split(rng, customer_lines, weights),
            _split(rng, anonymous_lines, rng.lognormal(0.0, 0.6, n_anonymous)),
        ]
    )
    customer = np.concatenate([owner, np.full(n_anonymous, -1)])
    invoices = _Invoices(
        times=_invoice_times(rng, len(sizes)),
        customer=customer,
        country=np.concatenate(
            [customers.country[owner], rng.choice(len(COUNTRIES), n_anonymous, p=_COUNTRY_P)]
        ),
        prefix=np.full(len(sizes), "", dtype=object),
    )

    invoice = np.repeat(np.arange(len(sizes)), sizes)
    buyer = np.where(customer >= 0, customers.segment[np.maximum(customer, 0)], len(SEGMENTS))
    line_buyer = buyer[invoice]
    product = np.empty(len(invoice), dtype="int64")
    bands = [s.price_band for s in SEGMENTS] + [_ANONYMOUS_BAND]
    for index, band in enumerate(bands):
        mask = line_buyer == index
        product[mask] = _pick_products(rng, catalogue, band, int(mask.sum()))
    typical = np.append(customers.quantity, _ANONYMOUS_QUANTITY)[customer[invoice]]
    noise = rng.lognormal(0.0, _LINE_SPREAD, len(invoice))
    quantity = np.clip(np.rint(typical * noise), 1, _LINE_CAP).astype("int64")

    # Some lines repeat the line before them; with the repeats that happen by chance, about 1% of
    # lines are exact duplicates, as in the real file.
    again = (rng.random(len(invoice)) < _DUPLICATE_SHARE) & (invoice == np.roll(invoice, 1))
    source = np.maximum.accumulate(np.where(again, 0, np.arange(len(invoice))))
    product, quantity = product[source], quantity[source]
    lines = _Lines(
        invoice=invoice,
        product=product,
        description=catalogue.descriptions[product],
        quantity=quantity,
        price=catalogue.prices[product],  # a copy: the oddities below stay on their lines
    )
    return invoices, lines


def _oddities(
    rng: np.random.Generator,
    catalogue: _Catalogue,
    customers: _Customers,
    purchases: _Invoices,
    lines: _Lines,
    rows: int,
) -> int | None:
    """The real file's odd lines, in place: free lines, outliers, its two largest values.

    Returns the line given the largest order (a wholesale customer's), None without a wholesaler.
    """
    anonymous = purchases.customer[lines.invoice] < 0
    shuffled = rng.permutation(np.flatnonzero(anonymous))
    n_free = round(rows * _FREE_SHARE)
    n_outliers = max(1, round(rows * _OUTLIERS_PER_ROW))
    free, shuffled = shuffled[:n_free], shuffled[n_free:]
    heavy_quantity, heavy_price = shuffled[:n_outliers], shuffled[n_outliers : 2 * n_outliers]
    manual = shuffled[2 * n_outliers]

    lines.price[free] = 0.0
    lines.description[free[rng.random(len(free)) < _UNDESCRIBED]] = ""
    heavy = 1 + rng.pareto(1.2, (2, n_outliers))
    lines.quantity[heavy_quantity] = np.rint(1_000 * heavy[0]).clip(max=_LINE_CAP)
    lines.price[heavy_price] = np.round(500 * heavy[1], 2).clip(max=_LARGEST_PRICE / 2)
    lines.product[manual], lines.description[manual] = _MANUAL, catalogue.descriptions[_MANUAL]
    lines.quantity[manual], lines.price[manual] = 1, _LARGEST_PRICE

    owned = np.flatnonzero(~anonymous)
    given_away = rng.choice(owned, round(rows * _CUSTOMER_FREE_SHARE), replace=False)
    wholesalers = np.flatnonzero(customers.segment == _WHOLESALE)
    if len(wholesalers) == 0:
        lines.price[given_away] = 0.0
        return None
    buyer = rng.choice(wholesalers)
    largest = owned[np.argmax(purchases.customer[lines.invoice[owned]] == buyer)]
    lines.price[given_away[given_away != largest]] = 0.0
    lines.quantity[largest] = _LARGEST_ORDER
    return int(largest)


def _adjustments(
    rng: np.random.Generator, catalogue: _Catalogue, n: int
) -> tuple[_Invoices, _Lines]:
    """Stock written off: one-line anonymous invoices, negative quantity, price 0, few notes."""
    product = _pick_products(rng, catalogue, _ANONYMOUS_BAND, n)
    notes = rng.choice(np.array(_ADJUSTMENT_NOTES, dtype=object), n)
    quantity = np.rint(rng.lognormal(np.log(10), 1.2, n)).clip(1, _LINE_CAP)
    invoices = _Invoices(
        times=_invoice_times(rng, n),
        customer=np.full(n, -1),
        country=np.full(n, _UK),
        prefix=np.full(n, "", dtype=object),
    )
    lines = _Lines(
        invoice=np.arange(n),
        product=product,
        description=np.where(rng.random(n) < _UNDESCRIBED, "", notes).astype(object),
        quantity=-quantity.astype("int64"),
        price=np.zeros(n),
    )
    return invoices, lines


def _bad_debt(catalogue: _Catalogue) -> tuple[_Invoices, _Lines]:
    """The A-invoices: 'Adjust bad debt', once at the bad debt's price and twice negated."""
    n = len(_BAD_DEBT_TIMES)
    invoices = _Invoices(
        times=np.array(_BAD_DEBT_TIMES, dtype="datetime64[m]"),
        customer=np.full(n, -1),
        country=np.full(n, _UK),
        prefix=np.full(n, "A", dtype=object),
    )
    product = np.full(n, len(catalogue.codes) - 1)
    lines = _Lines(
        invoice=np.arange(n),
        product=product,
        description=catalogue.descriptions[product],
        quantity=np.ones(n, dtype="int64"),
        price=_BAD_DEBT * np.array(_BAD_DEBT_SIGNS, dtype="float64"),
    )
    return invoices, lines


def _cancellations(
    rng: np.random.Generator, purchases: _Invoices, lines: _Lines, total: int, largest: int | None
) -> tuple[_Invoices, _Lines]:
    """Customers' C-invoices, each reversing lines of one of their earlier purchases.

    The largest order, when there is one, is the first: cancelled on its own two minutes later.
    """
    n = max(1, round(total / _LINES_PER_CANCELLATION))
    origin = rng.choice(np.flatnonzero(purchases.customer >= 0), n)
    sizes = np.bincount(lines.invoice, minlength=len(purchases.times))
    first_line = np.cumsum(sizes) - sizes
    if largest is not None:
        n = max(2, n)
        origin = np.concatenate([[lines.invoice[largest]], origin[: n - 1]])
        cancel_sizes = np.concatenate([[1], _split(rng, total - 1, np.ones(n - 1))])
    else:
        cancel_sizes = _split(rng, total, np.ones(n))
    cancel_origin = np.repeat(origin, cancel_sizes)
    offset = rng.random(len(cancel_origin)) * sizes[cancel_origin]
    reversed_line = first_line[cancel_origin] + offset.astype("int64")
    times = _cancellation_times(rng, purchases.times[origin])
    if largest is not None:
        reversed_line[0] = largest
        times[0] = purchases.times[origin[0]] + np.timedelta64(2, "m")
    invoices = _Invoices(
        times=times,
        customer=purchases.customer[origin],
        country=purchases.country[origin],
        prefix=np.full(n, "C", dtype=object),
    )
    reversed_lines = _Lines(
        invoice=np.repeat(np.arange(n), cancel_sizes),
        product=lines.product[reversed_line],
        description=lines.description[reversed_line],
        quantity=-lines.quantity[reversed_line],
        price=lines.price[reversed_line],
    )
    return invoices, reversed_lines


def _combine(parts: list[tuple[_Invoices, _Lines]]) -> tuple[_Invoices, _Lines]:
    """One set of invoices and lines; each part's line->invoice indexes shifted to match."""
    starts = np.cumsum([0] + [len(invoices.times) for invoices, _ in parts])
    invoices = _Invoices(
        *(np.concatenate([getattr(p[0], f) for p in parts]) for f in _Invoices.__dataclass_fields__)
    )
    lines = _Lines(
        np.concatenate([p[1].invoice + start for p, start in zip(parts, starts, strict=False)]),
        *(
            np.concatenate([getattr(p[1], f) for p in parts])
            for f in list(_Lines.__dataclass_fields__)[1:]
        ),
    )
    return invoices, lines


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
    customers = _customers(rng, max(len(SEGMENTS), round(rows * _CUSTOMERS_PER_ROW)))
    n_adjustments = round(rows * _ADJUSTMENT_SHARE)
    anonymous_lines = round(rows * _ANONYMOUS_SHARE) - n_adjustments - len(_BAD_DEBT_TIMES)
    cancelled_lines = round(rows * _CANCELLED_SHARE)
    customer_lines = rows - anonymous_lines - n_adjustments - len(_BAD_DEBT_TIMES) - cancelled_lines
    purchases, lines = _purchases(rng, catalogue, customers, customer_lines, anonymous_lines)
    largest = _oddities(rng, catalogue, customers, purchases, lines, rows)
    invoices, lines = _combine(
        [
            (purchases, lines),
            _cancellations(rng, purchases, lines, cancelled_lines, largest),
            _adjustments(rng, catalogue, n_adjustments),
            _bad_debt(catalogue),
        ]
    )

    # Invoices in chronological order, numbered like the real file with their prefixes.
    rank = np.empty(len(invoices.times), dtype="int64")
    rank[np.argsort(invoices.times, kind="stable")] = np.arange(len(rank))
    gaps = np.concatenate([[0], 1 + rng.poisson(0.75, len(rank) - 1)])
    numbers = (_FIRST_INVOICE + np.cumsum(gaps))[rank]
    invoice_no = np.array(
        [f"{p}{n}" for p, n in zip(invoices.prefix, numbers, strict=True)], dtype=object
    )

    order = np.argsort(rank[lines.invoice], kind="stable")
    invoice = lines.invoice[order]
    buyer = invoices.customer[invoice]
    frame = pd.DataFrame(
        {
            "InvoiceNo": invoice_no[invoice],
            "StockCode": catalogue.codes[lines.product[order]],
            "Description": lines.description[order],
            "Quantity": lines.quantity[order],
            "InvoiceDate": invoices.times[invoice].astype("datetime64[ns]"),
            "UnitPrice": lines.price[order],
            "CustomerID": np.where(buyer >= 0, customers.ids[buyer], None),
            "Country": _COUNTRY_NAMES[invoices.country[invoice]],
        },
        columns=list(COLUMNS),
    )
    names = np.array([s.name for s in SEGMENTS], dtype=object)
    by_id = np.argsort(customers.ids.astype("int64"))
    segments = pd.DataFrame(
        {"CustomerID": customers.ids[by_id], "Segment": names[customers.segment[by_id]]}
    )
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
