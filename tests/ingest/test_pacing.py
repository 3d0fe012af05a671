"""The producer's pacing, computed rather than timed: when each invoice message is due; and the
chunks it reads re-cut so that no invoice straddles two."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.ingest.messages import invoice_starts
from pipelines.ingest.producer import Pacing, whole_invoices
from pipelines.produce import main as produce


def _frame(invoices: list[tuple[str, str, int]]) -> pd.DataFrame:
    """One row per line of each (InvoiceNo, InvoiceDate, lines), in order."""
    rows = [(number, date) for number, date, lines in invoices for _ in range(lines)]
    frame = pd.DataFrame(rows, columns=["InvoiceNo", "InvoiceDate"])
    frame["InvoiceDate"] = pd.to_datetime(frame["InvoiceDate"])
    return frame.assign(CustomerID="17850", Country="United Kingdom")


def send_schedule(frame: pd.DataFrame, rate: float = 0.0, speedup: float = 0.0) -> np.ndarray:
    """When each message of `frame`, replayed whole, is due."""
    return Pacing(rate, speedup).due(frame, invoice_starts(frame))


INVOICES = [
    ("1", "2010-12-01 08:00", 2),
    ("2", "2010-12-01 09:00", 1),
    ("3", "2010-12-01 11:00", 3),
    ("4", "2010-12-01 10:00", 1),  # dated before the one sent before it
    ("5", "2010-12-01 13:00", 1),
]


def test_speedup_waits_the_gaps_between_invoice_dates_divided_by_x():
    due = send_schedule(_frame(INVOICES), speedup=3600)  # an hour of data per second
    np.testing.assert_allclose(due, [0, 1, 3, 3, 5])


def test_a_year_at_60000_takes_about_nine_minutes():
    year = [
        ("1", "2010-12-01 08:26", 1),
        ("2", "2011-06-01 12:00", 1),
        ("3", "2011-12-01 08:26", 1),
    ]
    (*_, last) = send_schedule(_frame(year), speedup=60_000)
    assert 8 * 60 < last < 9 * 60  # 365 days / 60,000 = 8.76 minutes


def test_rate_waits_for_the_rows_before_each_message():
    due = send_schedule(_frame(INVOICES), rate=2)  # 2 rows/s; messages of 2, 1, 3, 1, 1 rows
    np.testing.assert_allclose(due, [0, 1, 1.5, 3, 3.5])


def test_unthrottled_sends_everything_at_once():
    assert not send_schedule(_frame(INVOICES)).any()


def test_rate_and_speedup_exclude_each_other(capsys):
    with pytest.raises(ValueError, match="one of rate and speedup"):
        Pacing(rate=10, speedup=10)
    with pytest.raises(SystemExit):
        produce(["--rate", "100", "--speedup", "60000"])
    assert "choose one of --rate and --speedup" in capsys.readouterr().err


def _chunks(frame: pd.DataFrame, cuts: list[int]) -> list[pd.DataFrame]:
    bounds = [0, *cuts, len(frame)]
    return [
        frame.iloc[a:b].reset_index(drop=True) for a, b in zip(bounds, bounds[1:], strict=False)
    ]


@pytest.mark.parametrize("cuts", [[1], [2, 3], [1, 2, 3, 4, 5, 6, 7], [8]])
def test_chunks_are_recut_at_invoice_boundaries_and_paced_as_a_whole(cuts):
    frame = _frame(INVOICES)  # 8 rows; invoice 1 spans rows 0-1, invoice 3 rows 3-5
    recut = list(whole_invoices(_chunks(frame, cuts)))

    whole = pd.concat([chunk for chunk, _ in recut], ignore_index=True)
    pd.testing.assert_frame_equal(whole, frame)
    assert [first for _, first in recut] == np.cumsum([0, *(len(c) for c, _ in recut)])[
        :-1
    ].tolist()
    starts = [first + s for chunk, first in recut for s in invoice_starts(chunk)]
    assert starts == invoice_starts(frame).tolist()  # no invoice cut in two
    for options in ({"speedup": 3600}, {"rate": 2}):
        pacing = Pacing(**options)
        due = [pacing.due(c, invoice_starts(c), first) for c, first in recut]
        np.testing.assert_allclose(np.concatenate(due), send_schedule(frame, **options))
