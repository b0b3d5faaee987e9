"""The price table of ``glacierfs copy --dry-run``: defaults, overrides, bad files, arithmetic."""

import json

import pytest

from glacierfs.commands import pricing
from glacierfs.commands.copyplan import NAME_MAX, temp_path


def test_default_estimate_is_list_prices():
    prices = pricing.load_prices(None)
    # 2 Bulk jobs of 1 GiB in all, 1 GiB downloaded.
    est = pricing.estimate(prices, {"Bulk": (2, pricing.GB)}, pricing.GB)
    assert est.region == "us-east-1" and est.currency == "USD"
    assert est.retrieval == pytest.approx(0.0025 + 2 / 1000 * 0.025)
    assert est.transfer == pytest.approx(0.09)
    assert est.total == pytest.approx(est.retrieval + est.transfer)


def test_a_price_file_overrides_only_what_it_names(tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"region": "eu-west-1",
                                "tiers": {"Standard": {"per_gb": 0.5}}}))
    prices = pricing.load_prices(str(path))
    assert prices["region"] == "eu-west-1"
    assert prices["tiers"]["Standard"] == {"per_gb": 0.5, "per_1000_requests": 0.05}
    assert prices["tiers"]["Bulk"] == pricing.DEFAULT_PRICES["tiers"]["Bulk"]
    assert pricing.DEFAULT_PRICES["tiers"]["Standard"]["per_gb"] == 0.01  # not mutated
    monkeypatch.setenv(pricing.PRICE_FILE_ENV, str(path))
    assert pricing.load_prices(None)["region"] == "eu-west-1"


@pytest.mark.parametrize("content,message", [
    ("not json", "is not JSON"),
    ("[1]", "expected a JSON object"),
    ('{"tiers": {"Glacial": {}}}', "unknown tier"),
    ('{"price": 1}', "unknown key"),
    ('{"tiers": {"Bulk": {"per_gb": -1}}}', "must be a number"),
    ('{"transfer_out_per_gb": "x"}', "must be a number"),
])
def test_bad_price_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(pricing.PriceError, match=message):
        pricing.load_prices(str(path))
    with pytest.raises(pricing.PriceError, match="No such file"):
        pricing.load_prices(str(tmp_path / "missing.json"))


def test_temporary_names_stay_within_name_max(tmp_path):
    assert temp_path(tmp_path / "a.jpg") == tmp_path / ".a.jpg.glacierfs-part"
    long = tmp_path / ("é" * 127)   # 254 bytes
    tmp = temp_path(long)
    assert tmp.parent == tmp_path and len(tmp.name.encode()) <= NAME_MAX
    assert temp_path(long) == tmp   # fixed: a leftover is found again
