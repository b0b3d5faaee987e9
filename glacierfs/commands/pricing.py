"""Retrieval cost estimates for ``glacierfs copy --dry-run``: a documented, overridable price table.

Pure data and arithmetic, no I/O except reading a price file the user names. Glacier's prices
differ by region and change over time, so the built-in table is only a default: the vault API's
us-east-1 list prices (USD). Override any part of it with a JSON file given by ``--price-file``
or the ``GLACIERFS_PRICE_FILE`` environment variable, for example::

    {"region": "eu-central-1",
     "tiers": {"Standard": {"per_gb": 0.012, "per_1000_requests": 0.06}},
     "transfer_out_per_gb": 0.09}

Keys left out keep their default. ``GB`` is what AWS bills by: 2^30 bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

PRICE_FILE_ENV = "GLACIERFS_PRICE_FILE"
GB = 1024 ** 3  # AWS bills per GB of 2^30 bytes
TIERS = ("Expedited", "Standard", "Bulk")

# Amazon S3 Glacier (vault API) retrieval list prices, us-east-1, USD. Data transfer out to the
# internet is billed on top of retrieval for every byte that leaves AWS (first tier of the
# table; the first 100 GB a month are free account-wide, not counted here).
DEFAULT_PRICES: dict = {  # type: ignore[type-arg]
    "region": "us-east-1",
    "currency": "USD",
    "tiers": {
        "Expedited": {"per_gb": 0.03, "per_1000_requests": 10.00},
        "Standard": {"per_gb": 0.01, "per_1000_requests": 0.05},
        "Bulk": {"per_gb": 0.0025, "per_1000_requests": 0.025},
    },
    "transfer_out_per_gb": 0.09,
    # S3 storage per GB-month by class (us-east-1 list prices), for ``copy … s3://`` dry runs.
    "s3_storage_per_gb_month": {
        "STANDARD": 0.023, "REDUCED_REDUNDANCY": 0.024, "STANDARD_IA": 0.0125,
        "ONEZONE_IA": 0.01, "INTELLIGENT_TIERING": 0.023, "GLACIER_IR": 0.004,
        "GLACIER": 0.0036, "DEEP_ARCHIVE": 0.00099, "EXPRESS_ONEZONE": 0.11,
        "OUTPOSTS": 0.023, "SNOW": 0.023,
    },
}
# GLACIER and DEEP_ARCHIVE bill 32 KiB more per object at the class's rate and 8 KiB of
# STANDARD (the object's index), on top of its bytes.
ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")
OVERHEAD_AT_CLASS = 32 * 1024
OVERHEAD_STANDARD = 8 * 1024


class PriceError(Exception):
    """A price file that cannot be used; one line for the user."""


@dataclass(frozen=True)
class Estimate:
    retrieval: float      # per-GB retrieval and per-request charges of the jobs to start
    transfer: float       # data transfer out for the bytes to download
    currency: str
    region: str

    @property
    def total(self) -> float:
        return self.retrieval + self.transfer


def load_prices(path: str | None = None) -> dict:  # type: ignore[type-arg]
    """The default table, overridden by ``path`` (or ``$GLACIERFS_PRICE_FILE``) if given."""
    path = path or os.environ.get(PRICE_FILE_ENV) or None
    prices = json.loads(json.dumps(DEFAULT_PRICES))  # a deep copy
    if path is None:
        return prices
    try:
        with open(path, encoding="utf-8") as f:
            override = json.load(f)
    except OSError as exc:
        raise PriceError(f"price file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise PriceError(f"price file {path} is not JSON: {exc}") from None
    if not isinstance(override, dict):
        raise PriceError(f"price file {path}: expected a JSON object")
    for key, value in override.items():
        if key == "tiers":
            if not isinstance(value, dict):
                raise PriceError(f"price file {path}: 'tiers' must be an object")
            for tier, entry in value.items():
                if tier not in TIERS or not isinstance(entry, dict):
                    raise PriceError(f"price file {path}: unknown tier {tier!r}")
                prices["tiers"][tier].update(entry)
        elif key == "s3_storage_per_gb_month":
            if not isinstance(value, dict) or not all(
                    isinstance(v, (int, float)) and v >= 0 for v in value.values()):
                raise PriceError(f"price file {path}: {key} must map classes to numbers >= 0")
            prices[key].update(value)
        elif key in prices:
            prices[key] = value
        else:
            raise PriceError(f"price file {path}: unknown key {key!r}")
    for tier, entry in prices["tiers"].items():
        for name in ("per_gb", "per_1000_requests"):
            if not isinstance(entry.get(name), (int, float)) or entry[name] < 0:
                raise PriceError(f"price file {path}: {tier}.{name} must be a number >= 0")
    if not isinstance(prices["transfer_out_per_gb"], (int, float)) \
            or prices["transfer_out_per_gb"] < 0:
        raise PriceError(f"price file {path}: transfer_out_per_gb must be a number >= 0")
    return prices


def estimate(prices: dict, jobs: dict[str, tuple[int, int]],  # type: ignore[type-arg]
             download_bytes: int) -> Estimate:
    """Cost of starting ``jobs`` ({tier: (count, bytes)}) and downloading ``download_bytes``."""
    retrieval = 0.0
    for tier, (count, nbytes) in jobs.items():
        entry = prices["tiers"][tier]
        retrieval += nbytes / GB * entry["per_gb"] + count / 1000 * entry["per_1000_requests"]
    return Estimate(retrieval, download_bytes / GB * prices["transfer_out_per_gb"],
                    str(prices.get("currency", "USD")), str(prices.get("region", "?")))


def storage_month(prices: dict, storage_class: str, objects: int,  # type: ignore[type-arg]
                  nbytes: int) -> float:
    """Monthly cost of keeping ``objects`` objects of ``nbytes`` in all at ``storage_class``."""
    table = prices["s3_storage_per_gb_month"]
    rate = float(table.get(storage_class, table["STANDARD"]))
    cost = nbytes / GB * rate
    if storage_class in ARCHIVE_CLASSES:
        cost += objects * (OVERHEAD_AT_CLASS / GB * rate
                           + OVERHEAD_STANDARD / GB * float(table["STANDARD"]))
    return cost
