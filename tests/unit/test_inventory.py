"""Inventory parsing: the formats of ../shared/reference.md ("Inventory output"), damage of every
kind, and memory that stays flat however many archives the vault holds."""

import csv
import hashlib
import io
import json
import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings, strategies as st

from glacierfs.catalog import inventory as inv
from glacierfs.catalog.inventory import (
    InventoryArchive,
    InventoryFormatError,
    InventoryReport,
    iter_inventory,
    sniff_format,
)

ARN = "arn:aws:glacier:us-east-1:012345678901:vaults/photos"


def archive_id(i: int) -> str:
    return (f"id{i:06d}-" + hashlib.sha256(str(i).encode()).hexdigest() * 3)[:138].replace("a", "_")


def tree_hash(i: int) -> str:
    return hashlib.sha256(f"h{i}".encode()).hexdigest()


def entry(i: int, description: str | None = None, **override) -> dict:
    item = {"ArchiveId": archive_id(i),
            "ArchiveDescription": f"file{i}.txt" if description is None else description,
            "CreationDate": "2012-05-15T17:19:46.700Z", "Size": 1000 + i,
            "SHA256TreeHash": tree_hash(i)}
    item.update(override)
    return item


def expected(item: dict) -> InventoryArchive:
    return InventoryArchive(item["ArchiveId"], item["ArchiveDescription"],
                            datetime(2012, 5, 15, 17, 19, 46, 700000, tzinfo=UTC), item["Size"],
                            item["SHA256TreeHash"])


def json_doc(items: list, *, head: dict | None = None, tail: dict | None = None, **dumps) -> bytes:
    doc = dict(head if head is not None else {"VaultARN": ARN,
                                              "InventoryDate": "2020-01-02T03:04:05Z"})
    doc["ArchiveList"] = items
    doc.update(tail or {})
    return json.dumps(doc, ensure_ascii=False, **dumps).encode()


def parse(data: bytes, fmt: str = "JSON") -> tuple[list[InventoryArchive], InventoryReport]:
    report = InventoryReport()
    return list(iter_inventory(io.BytesIO(data), fmt, report)), report


def csv_quote(description: str) -> str:
    """Glacier's CSV quoting: ``"`` becomes ``\\"``, backslashes are left alone."""
    return '"' + description.replace('"', '\\"') + '"'


def csv_doc(items: list, newline: str = "\n") -> bytes:
    lines = [",".join(inv.CSV_HEADER)]
    for it in items:
        lines.append(f"{it['ArchiveId']},{csv_quote(it['ArchiveDescription'])},"
                     f"{it['CreationDate']},{it['Size']},{it['SHA256TreeHash']}")
    return (newline.join(lines) + newline).encode()


# --- JSON ------------------------------------------------------------------------------------

def test_json_rows_and_header_fields():
    items = [entry(i) for i in range(3)]
    rows, report = parse(json_doc(items, separators=(",", ":")))
    assert rows == [expected(it) for it in items]
    assert report.vault_arn == ARN
    assert report.inventory_date == datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert (report.rows_ok, report.rows_skipped, report.truncated) == (3, 0, False)
    assert report.problems == []
    assert rows[0].creation_date.tzinfo is not None


def test_json_header_fields_after_the_list_and_unknown_keys():
    items = [entry(1), entry(2)]
    data = json_doc(items, head={"Junk": {"a": [1, {"b": "]}"}]}, "N": 12345678901234567890},
                    tail={"VaultARN": ARN, "InventoryDate": "2020-01-02T03:04:05.123Z",
                          "More": [None, True, 1.5e10]})
    rows, report = parse(data)
    assert rows == [expected(it) for it in items]
    assert report.vault_arn == ARN
    assert report.inventory_date == datetime(2020, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)


def test_json_whitespace_everywhere_and_bom():
    items = [entry(i, description="ünïcödé \"quoted\" \\ back") for i in range(3)]
    data = b"\xef\xbb\xbf \n" + json_doc(items, indent=4).replace(b"\": ", b"\" \t:\r\n ") + b"\n\n"
    rows, report = parse(data)
    assert rows == [expected(it) for it in items]
    assert not report.truncated and report.rows_skipped == 0


def test_json_empty_archive_list():
    rows, report = parse(json_doc([]))
    assert rows == [] and not report.truncated and report.vault_arn == ARN


def test_json_unknown_entry_keys_are_ignored():
    rows, _ = parse(json_doc([{**entry(1), "Extra": {"x": [1, 2]}}]))
    assert rows == [expected(entry(1))]


@pytest.mark.parametrize("override,reason", [
    ({"ArchiveId": ""}, "ArchiveId"),
    ({"ArchiveId": "abc/def"}, "ArchiveId"),
    ({"ArchiveId": "a b"}, "ArchiveId"),
    ({"ArchiveId": "a" * 1025}, "ArchiveId"),
    ({"ArchiveId": 12}, "ArchiveId"),
    ({"ArchiveId": None}, "ArchiveId"),
    ({"Size": -1}, "Size"),
    ({"Size": 1.5}, "Size"),
    ({"Size": True}, "Size"),
    ({"Size": "12x"}, "Size"),
    ({"Size": 2 ** 63}, "Size"),
    ({"SHA256TreeHash": "ab" * 31}, "SHA256TreeHash"),
    ({"SHA256TreeHash": "g" * 64}, "SHA256TreeHash"),
    ({"SHA256TreeHash": None}, "SHA256TreeHash"),
    ({"CreationDate": "yesterday"}, "CreationDate"),
    ({"CreationDate": 1336000000}, "CreationDate"),
    ({"CreationDate": "2012-13-15T17:19:46Z"}, "CreationDate"),
    ({"ArchiveDescription": 5}, "ArchiveDescription"),
    ({"ArchiveDescription": ["a"]}, "ArchiveDescription"),
])
def test_json_invalid_rows_are_skipped_and_counted(override, reason):
    bad = entry(1, **override)
    rows, report = parse(json_doc([entry(0), bad, entry(2)]))
    assert rows == [expected(entry(0)), expected(entry(2))]
    assert report.rows_skipped == 1 and report.rows_ok == 2
    assert reason in report.problems[0]
    assert not report.truncated


def test_json_missing_keys_and_non_object_entries_are_skipped():
    items = [entry(0), {"ArchiveId": archive_id(9)}, "string", 7, None, [1], entry(2)]
    rows, report = parse(json_doc(items))
    assert [r.archive_id for r in rows] == [archive_id(0), archive_id(2)]
    assert report.rows_skipped == 5


def test_json_lenient_values():
    items = [entry(0, Size="42", SHA256TreeHash=tree_hash(0).upper()),
             entry(1, CreationDate="2012-05-15T17:19:46Z", ArchiveDescription=None),
             entry(2, CreationDate="2012-05-15T19:19:46.700+02:00"),
             entry(3, CreationDate="2012-05-15T17:19:46.7")]
    rows, report = parse(json_doc(items))
    assert report.rows_skipped == 0
    assert rows[0].size == 42 and rows[0].tree_hash == tree_hash(0)
    assert rows[1].description == "" and rows[1].creation_date == datetime(
        2012, 5, 15, 17, 19, 46, tzinfo=UTC)
    assert rows[2].creation_date == datetime(2012, 5, 15, 17, 19, 46, 700000, tzinfo=UTC)
    assert rows[2].creation_date.utcoffset() == timedelta(0)
    assert rows[3].creation_date == rows[2].creation_date


def test_json_bad_inventory_date_is_a_problem_not_an_error():
    rows, report = parse(json_doc([entry(0)], head={"VaultARN": ARN, "InventoryDate": "soon"}))
    assert len(rows) == 1 and report.inventory_date is None
    assert "InventoryDate" in report.problems[0]


def test_json_duplicate_archive_ids_are_all_yielded():
    first, second = entry(1, description="old"), entry(1, description="new")
    rows, report = parse(json_doc([first, second]))
    assert [r.description for r in rows] == ["old", "new"]
    assert report.rows_ok == 2


def test_json_report_is_filled_in_during_iteration():
    report = InventoryReport()
    it = iter_inventory(io.BytesIO(json_doc([entry(0), entry(1)])), "JSON", report)
    next(it)
    assert report.rows_ok == 1 and report.vault_arn == ARN
    next(it)
    assert report.rows_ok == 2


def cut_points(data: bytes, items: list) -> list[int]:
    """Byte offset just past each entry's closing brace (the tree hash is an entry's last key)."""
    return [data.index(b"}", data.index(it["SHA256TreeHash"].encode())) + 1 for it in items]


@pytest.mark.parametrize("dumps", [{"separators": (",", ":")}, {"indent": 1}])
def test_json_truncated_at_every_byte_offset(dumps):
    items = [entry(0, description="Ёлка/ёж.txt"), entry(1, Size=12345), entry(2)]
    data = json_doc(items, **dumps)
    ends = cut_points(data, items)
    for cut in range(len(data)):
        rows, report = parse(data[:cut])
        want = [expected(it) for it, end in zip(items, ends, strict=True) if end <= cut]
        assert rows == want, cut
        assert report.truncated, cut
        assert report.rows_skipped == 0, cut
    rows, report = parse(data)
    assert len(rows) == 3 and not report.truncated


def test_json_truncated_with_header_after_the_list():
    items = [entry(0), entry(1)]
    data = json_doc(items, head={}, tail={"VaultARN": ARN})
    rows, report = parse(data[:-3])
    assert len(rows) == 2 and report.truncated and report.vault_arn is None


@pytest.mark.parametrize("data", [
    b"hello", b"<html><body>503</body></html>", b"[]", b"[{}]", b"{}", b'{"foo": 1}',
    b"{garbage}", b'{"ArchiveLis": []}', b"\x00\x01\x02\xff\xfe" * 100, b"null", b'"x"',
    b'{"VaultARN": 5, "ArchiveList" 3}',
    csv_doc([entry(0)]),
])
def test_json_garbage_raises_before_any_row(data):
    report = InventoryReport()
    it = iter_inventory(io.BytesIO(data), "JSON", report)
    with pytest.raises(InventoryFormatError):
        next(it)
    assert report.rows_ok == 0


def test_json_damage_after_rows_stops_without_error():
    good = json.dumps(entry(0))
    data = f'{{"VaultARN":"{ARN}","ArchiveList":[{good},{{"ArchiveId": oops}},{good}]}}'.encode()
    rows, report = parse(data)
    assert rows == [expected(entry(0))]
    assert report.truncated
    assert "unreadable" in report.problems[-1]


def test_json_damage_in_first_entry_of_a_recognised_inventory_is_not_fatal():
    data = f'{{"VaultARN":"{ARN}","ArchiveList":[{{"ArchiveId": oops}}]}}'.encode()
    rows, report = parse(data)
    assert rows == [] and report.truncated


def test_json_empty_document_is_truncated_not_garbage():
    rows, report = parse(b"")
    assert rows == [] and report.truncated
    rows, report = parse(b"  \n")
    assert rows == [] and report.truncated


def test_json_long_description_is_cut_to_glacier_limit():
    rows, report = parse(json_doc([entry(0, description="d" * 5000), entry(1)]))
    assert rows[0].description == "d" * inv.MAX_DESCRIPTION_CHARS
    assert len(rows) == 2 and report.rows_skipped == 0
    assert "cut to 1024" in report.problems[0]


def test_json_huge_entry_is_skipped_without_losing_the_rest():
    huge = entry(1, description="\\\"x{[" * (inv.MAX_ITEM_CHARS // 2))
    unknown_big = ["y" * 100] * (inv.MAX_ITEM_CHARS // 50)
    data = json_doc([entry(0), huge, entry(2)], tail={"Big": unknown_big, "Num": 1,
                                                       "VaultARN": ARN})
    rows, report = parse(data)
    assert [r.archive_id for r in rows] == [archive_id(0), archive_id(2)]
    assert report.rows_skipped == 1 and not report.truncated
    assert report.vault_arn == ARN
    assert any("larger than" in p for p in report.problems)


def test_json_huge_entry_cut_short_is_truncation():
    data = json_doc([entry(0), entry(1, description="z" * (3 * inv.MAX_ITEM_CHARS))])
    rows, report = parse(data[: 2 * inv.MAX_ITEM_CHARS])
    assert len(rows) == 1 and report.truncated


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 64), st.lists(st.text(max_size=30), min_size=1, max_size=8))
def test_json_block_boundaries_do_not_matter(block, descriptions):
    items = [entry(i, description=d) for i, d in enumerate(descriptions)]
    data = json_doc(items, head={"N": 123456789, "VaultARN": ARN}, tail={"M": 9876.5e-3})
    old = inv.BLOCK_SIZE
    inv.BLOCK_SIZE = block
    try:
        rows, report = parse(data)
    finally:
        inv.BLOCK_SIZE = old
    assert rows == [expected(it) for it in items]
    assert not report.truncated and report.vault_arn == ARN


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_json_arbitrary_bytes_never_crash(data):
    report = InventoryReport()
    try:
        rows = list(iter_inventory(io.BytesIO(data), "JSON", report))
    except InventoryFormatError:
        assert report.rows_ok == 0
        return
    assert len(rows) == report.rows_ok


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_json_mutated_documents_never_crash(data):
    doc = bytearray(json_doc([entry(0), entry(1)]))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(doc) - 1))
        doc[pos] = data.draw(st.sampled_from(b'{}[]",:\\ x0\x00\xff'))
    report = InventoryReport()
    try:
        rows = list(iter_inventory(io.BytesIO(bytes(doc)), "JSON", report))
    except InventoryFormatError:
        return
    assert len(rows) == report.rows_ok <= 2


# --- CSV -------------------------------------------------------------------------------------

AMBIGUOUS = [
    "ends with a backslash\\",
    "two backslashes\\\\",
    'has \\" backslash-quote',
    'has "quotes" inside',
    '"',
    '\\"',
    'a","b',
    "commas, many, of, them,",
    ",",
    "",
    "2012-05-15T17:19:46.700Z,1,abc",
    "\\",
]


def test_csv_ambiguous_descriptions():
    items = [entry(i, description=d) for i, d in enumerate(AMBIGUOUS)]
    rows, report = parse(csv_doc(items), "CSV")
    assert [r.description for r in rows] == AMBIGUOUS
    assert rows == [expected(it) for it in items]
    assert report.rows_skipped == 0 and not report.truncated


def test_csv_module_gets_the_backslash_case_wrong():
    # Why the parser works by structure: the csv module cannot read Glacier's quoting.
    line = csv_doc([entry(0, description="ends\\")]).decode().splitlines()[1]
    parsed = next(csv.reader([line], escapechar="\\", doublequote=False))
    assert parsed[1] != "ends\\" or len(parsed) != 5


def test_csv_crlf_bom_quoted_header_and_blank_lines():
    items = [entry(0), entry(1)]
    data = b"\xef\xbb\xbf" + csv_doc(items, newline="\r\n").replace(
        b"ArchiveId,", b'"ArchiveId",', 1) + b"\r\n\r\n"
    rows, report = parse(data, "CSV")
    assert rows == [expected(it) for it in items]
    assert not report.truncated


def test_csv_quoted_other_fields_and_unquoted_description():
    it = entry(0)
    line = (f'"{it["ArchiveId"]}",plain,"{it["CreationDate"]}","{it["Size"]}",'
            f'"{it["SHA256TreeHash"]}"')
    rows, _ = parse(csv_doc([]) + line.encode() + b"\n", "CSV")
    assert rows == [expected(entry(0, description="plain"))]


def test_csv_bad_rows_skipped_and_counted():
    good = csv_doc([entry(0)]).decode().splitlines()[1]
    bad = [
        "no commas at all",
        "a,b",
        good.replace(tree_hash(0), "xyz"),
        good.replace(",1000,", ",-5,"),
        good.replace("2012-05-15", "2012-99-15"),
        good.replace(archive_id(0), "bad id"),
    ]
    data = csv_doc([entry(1)]) + "\n".join(bad + [good]).encode() + b"\n"
    rows, report = parse(data, "CSV")
    assert [r.archive_id for r in rows] == [archive_id(1), archive_id(0)]
    assert report.rows_skipped == len(bad)


def test_csv_duplicates_and_long_descriptions():
    items = [entry(1, description="x" * 3000), entry(1, description="y")]
    rows, report = parse(csv_doc(items), "CSV")
    assert [r.description[:1] for r in rows] == ["x", "y"]
    assert len(rows[0].description) == inv.MAX_DESCRIPTION_CHARS


def test_csv_over_long_line_is_skipped():
    items = [entry(0), entry(1, description="q" * (inv.MAX_LINE_BYTES + 10)), entry(2)]
    rows, report = parse(csv_doc(items), "CSV")
    assert [r.archive_id for r in rows] == [archive_id(0), archive_id(2)]
    assert report.rows_skipped == 1


def test_csv_truncated_at_every_byte_offset():
    items = [entry(0, description='a\\"b,c\\'), entry(1, description="Ёлка"), entry(2)]
    data = csv_doc(items)
    text_ends, line_ends = [], []
    offset = 0
    for line in data.split(b"\n")[:-1]:
        text_ends.append(offset + len(line))
        offset += len(line) + 1
        line_ends.append(offset)
    clean = set(text_ends) | set(line_ends)
    for cut in range(len(data) + 1):
        rows, report = parse(data[:cut], "CSV")
        want = [expected(it) for it, end in zip(items, text_ends[1:], strict=True) if end <= cut]
        assert rows == want, cut
        assert report.truncated == (cut not in clean), cut
        assert report.rows_skipped == 0, cut


@pytest.mark.parametrize("data", [b"hello\n", json_doc([entry(0)]),
                                  b"ArchiveId,Description\n", b"\xff\xfe\x00garbage"])
def test_csv_garbage_raises_before_any_row(data):
    it = iter_inventory(io.BytesIO(data), "CSV", InventoryReport())
    with pytest.raises(InventoryFormatError):
        next(it)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                              blacklist_characters="\r\n"), max_size=40),
                min_size=1, max_size=6))
def test_csv_any_printable_description_round_trips(descriptions):
    items = [entry(i, description=d) for i, d in enumerate(descriptions)]
    rows, report = parse(csv_doc(items), "CSV")
    assert [r.description for r in rows] == descriptions
    assert report.rows_skipped == 0


# --- sniffing and entry points ---------------------------------------------------------------

def test_sniff_format():
    assert sniff_format(b'{"VaultARN":') == "JSON"
    assert sniff_format(b"\xef\xbb\xbf \n {") == "JSON"
    assert sniff_format(b"ArchiveId,ArchiveDescription") == "CSV"
    assert sniff_format(b'"ArchiveId","ArchiveDescription"') == "CSV"
    for junk in (b"", b"<html>", b"[", b"hello"):
        with pytest.raises(InventoryFormatError):
            sniff_format(junk)


def test_unknown_format_is_refused_at_once():
    with pytest.raises(ValueError):
        iter_inventory(io.BytesIO(b"{}"), "XML", InventoryReport())
    rows, _ = parse(json_doc([entry(0)]), "json")
    assert len(rows) == 1


# --- memory ----------------------------------------------------------------------------------

class GeneratedStream(io.RawIOBase):
    """A document produced piece by piece, so the test itself holds none of it."""

    def __init__(self, pieces):
        self._pieces = iter(pieces)
        self._pending = b""
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while len(self._pending) < len(buffer):
            piece = next(self._pieces, None)
            if piece is None:
                break
            self._pending += piece
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self.size += n
        return n


ID_BASE = "x" * 128


def generated_rows(count: int, template: str):
    """``count`` rows of about 400 bytes; cheap to build, so the test measures the parser."""
    for start in range(0, count, 1000):
        yield "".join(template.format(i=i, id=f"{ID_BASE}{i:010d}", hash=f"{i:064x}")
                      for i in range(start, min(count, start + 1000))).encode()


def generated_json(count: int):
    yield f'{{"VaultARN":"{ARN}","InventoryDate":"2020-01-01T00:00:00Z","ArchiveList":['.encode()
    yield from generated_rows(count, '{{"ArchiveId":"{id}","ArchiveDescription":"' + "d" * 100
                              + '","CreationDate":"2012-05-15T17:19:46.700Z","Size":{i},'
                              '"SHA256TreeHash":"{hash}"}},')
    yield b'{"Padding":"not an archive"}]}'


def generated_csv(count: int):
    yield csv_doc([])
    yield from generated_rows(count, '{id},"' + "d,\\\\" * 30
                              + '",2012-05-15T17:19:46.700Z,{i},{hash}\n')


@pytest.mark.slow
@pytest.mark.parametrize("fmt,gen", [("JSON", generated_json), ("CSV", generated_csv)])
def test_memory_is_bounded_for_100000_rows(fmt, gen):
    count = 100_000
    stream = io.BufferedReader(GeneratedStream(gen(count)), buffer_size=inv.BLOCK_SIZE)
    report = InventoryReport()
    tracemalloc.start()
    try:
        seen = 0
        for row in iter_inventory(stream, fmt, report):
            seen += 1
            last = row
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = stream.raw.size
    assert seen == count == report.rows_ok and not report.truncated
    assert last.archive_id == f"{ID_BASE}{count - 1:010d}" and last.size == count - 1
    assert size > 30_000_000
    assert peak < 12 * inv.BLOCK_SIZE < size / 2, (peak, size)


def test_timezone_of_offset_dates_is_utc():
    rows, _ = parse(json_doc([entry(0, CreationDate="2012-05-15T12:00:00-05:00")]))
    assert rows[0].creation_date == datetime(2012, 5, 15, 17, 0, tzinfo=UTC)
    assert rows[0].creation_date.utcoffset() == timedelta(0)
