"""A select request's documents and key: what makes two requests one paid job (pure)."""

from __future__ import annotations

import pytest

from glacierfs.jobs.selectspec import SelectRequest, SpecError, job_key, parse_s3_url


def request(**changes) -> SelectRequest:
    args = {"query": "SELECT * FROM archive", "bucket": "b", "prefix": "p", "tier": "Bulk",
            "header": "use", "delimiter": ","}
    args.update(changes)
    return SelectRequest.build(**args)


def test_the_key_survives_glaciers_echo_with_defaults_filled_in():
    req = request()
    echoed = {"Expression": "SELECT * FROM archive", "ExpressionType": "SQL",
              "InputSerialization": {"csv": {"FileHeaderInfo": "Use", "FieldDelimiter": ",",
                                             "RecordDelimiter": "\n", "QuoteCharacter": '"',
                                             "Comments": None}},
              "OutputSerialization": {"csv": {"QuoteFields": "AsNeeded"}}}
    location = {"S3": {"BucketName": "b", "Prefix": "p", "UserMetadata": {},
                       "AccessControlList": None}}
    assert job_key("v", "a", echoed, location) == req.key("v", "a")


@pytest.mark.parametrize("change", [{"query": "SELECT _1 FROM archive"}, {"bucket": "c"},
                                    {"prefix": "q"}, {"header": "none"}, {"delimiter": ";"}])
def test_anything_that_changes_the_result_changes_the_key(change):
    assert request(**change).key("v", "a") != request().key("v", "a")


def test_the_tier_does_not_change_the_key_but_the_archive_does():
    assert request(tier="Expedited").key("v", "a") == request().key("v", "a")
    assert request().key("v", "b") != request().key("v", "a")
    assert request().key("w", "a") != request().key("v", "a")


def test_json_round_trip_and_validation():
    req = request(delimiter="|")
    assert req.delimiter == "|"
    assert SelectRequest.from_json(req.to_json()) == req
    for bad in ({"query": " "}, {"tier": "Fast"}, {"header": "first"}, {"delimiter": ";;"}):
        with pytest.raises(SpecError):
            request(**bad)
    with pytest.raises(SpecError):
        SelectRequest.from_json(b"not json")


@pytest.mark.parametrize("url,want", [("s3://bkt/a/b/", ("bkt", "a/b")), ("s3://bkt/x", ("bkt", "x"))])
def test_s3_urls(url, want):
    assert parse_s3_url(url) == want


@pytest.mark.parametrize("url", ["bkt/x", "s3://", "s3:///x", "s3://bkt", "s3://bkt/"])
def test_bad_s3_urls(url):
    with pytest.raises(SpecError):
        parse_s3_url(url)


@pytest.mark.parametrize("delimiter", ["\\t", "\t", "\x1f", "é", "\x7f"])
def test_delimiters_glacier_refuses_are_refused_before_any_job(delimiter):
    """Glacier's CSVInput.FieldDelimiter: a newline, a carriage return or ASCII 32-126; a tab
    (what a TSV export would want) is refused by Glacier, so say so here, not after a job."""
    with pytest.raises(SpecError, match="Glacier Select takes"):
        request(delimiter=delimiter)
    assert request(delimiter=" ").delimiter == " " and request(delimiter="~").delimiter == "~"


@pytest.mark.parametrize("url", ["s3://Bad_Bucket!/x", "s3://a b/x", "s3://bücket/x"])
def test_an_impossible_bucket_name_is_refused_before_any_job(url):
    with pytest.raises(SpecError, match="is not an S3 bucket name"):
        parse_s3_url(url)
    assert parse_s3_url("s3://Legacy_Bucket.1/x") == ("Legacy_Bucket.1", "x")
