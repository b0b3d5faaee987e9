"""Runs last in this directory: prints the tally of the reliability run and holds the two
numbers that must stay zero (also printed in pytest's terminal summary)."""

from __future__ import annotations

import json

import rel_util


def test_summary_no_bad_bytes_no_duplicate_jobs(capsys) -> None:
    tally = dict(rel_util.TALLY)
    rel_util.TALLY_FILE.write_text(json.dumps(tally, indent=2))
    with capsys.disabled():
        print("\nreliability tally: " + ", ".join(f"{k}={v}" for k, v in tally.items()))
    assert tally["bad_bytes_served"] == 0
    assert tally["duplicate_jobs"] == 0
