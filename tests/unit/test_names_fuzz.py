"""Property tests: whatever the description, decoding never raises and every name is safe."""

import base64
import json

from hypothesis import HealthCheck, given, settings, strategies as st

from glacierfs.catalog import names

from glacierfs.catalog.names import (
    MAX_NAME_BYTES,
    RESERVED_ROOT_NAMES,
    archive_id_name,
    decode_description,
    decode_utf7,
    duplicate_name,
    safe_component,
)

FORMATS = {"mt2", "mt1", "fastglacier4", "fastglacier3", "fastglacier2", "fastglacier1",
           "cloudberry", "qnap", "plain", "none"}
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text biased towards what breaks path handling.
NASTY = st.sampled_from(["/", "\\", ".", "..", "\x00", "\x1b", "\x85", "\u202e", "\ud800",
                         "\udc00", "+", "-", "=", "<", ">", '"', "{", "}", "я", "😀", " ",
                         ".by-id", "mt2 ", "<m>", "</m>", "<p>", "</p>"])
TEXT = st.one_of(
    st.text(),
    st.lists(st.one_of(NASTY, st.text(max_size=5)), max_size=40).map("".join),
    st.text(alphabet="./\\", max_size=30),
)
ARCHIVE_IDS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
                      min_size=1, max_size=138)


def is_safe_component(part: str) -> bool:
    return (part not in ("", ".", "..")
            and "/" not in part and "\x00" not in part
            and len(part.encode("utf-8")) <= MAX_NAME_BYTES)  # strict: raises on surrogates


def assert_safe_parts(parts: tuple[str, ...]) -> None:
    assert all(is_safe_component(p) for p in parts), parts
    assert not parts or parts[0] not in RESERVED_ROOT_NAMES


def wrap(path: str, kind: int) -> str:
    """``path`` in one of the structured formats, so the decoders' happy paths get fuzzed too."""
    raw = path.encode("utf-8", "surrogatepass")
    if kind == 0:
        payload = json.dumps({"filename": path, "mtime": "20200101T000000Z"})
        return "mt2 " + base64.urlsafe_b64encode(payload.encode("utf-8", "surrogatepass")).decode()
    if kind == 1:
        return f"<m><v>4</v><p>{base64.b64encode(raw).decode()}</p></m>"
    if kind == 2:
        return json.dumps({"Path": path.encode("utf-7", "surrogatepass").decode("ascii")})
    return json.dumps({"path": path, "type": "file"})


@SETTINGS
@given(TEXT)
def test_any_description_decodes_to_safe_parts(description):
    d = decode_description(description)
    assert_safe_parts(d.parts)
    assert d.format in FORMATS
    assert not (d.is_folder and not d.parts)
    assert d.mtime is None or d.mtime.utcoffset().total_seconds() == 0


@SETTINGS
@given(TEXT, st.integers(0, 3))
def test_any_path_in_any_format_decodes_to_safe_parts(path, kind):
    d = decode_description(wrap(path, kind))
    assert_safe_parts(d.parts)


@SETTINGS
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"),
                                               blacklist_characters="/\\\u202a\u202b\u202c"
                                               "\u202d\u202e\u2066\u2067\u2068\u2069"),
                        min_size=1, max_size=20).filter(lambda c: c not in (".", "..")),
                min_size=1, max_size=5),
       st.integers(0, 3))
def test_ordinary_paths_survive_every_format(components, kind):
    path = "/".join(components)
    d = decode_description(wrap(path, kind))
    expected = tuple(components)
    if expected[0] in RESERVED_ROOT_NAMES:
        expected = ("_" + expected[0],) + expected[1:]
    assert d.parts == expected


@SETTINGS
@given(TEXT)
def test_safe_component_is_safe_and_idempotent(name):
    part = safe_component(name)
    if part is not None:
        assert is_safe_component(part)
        assert safe_component(part) == part


@SETTINGS
@given(st.text())
def test_utf7_decoder_matches_python_on_valid_input(text):
    encoded = text.encode("utf-7", "surrogatepass").decode("ascii")
    try:
        expected = encoded.encode("ascii").decode("utf-7")
    except UnicodeDecodeError:
        return  # Python itself refuses (lone surrogates); we only promise not to raise
    if any("\ud800" <= c <= "\udfff" for c in expected):
        return
    assert decode_utf7(encoded) == expected


@SETTINGS
@given(TEXT)
def test_utf7_decoder_never_raises(text):
    decode_utf7(text)


@SETTINGS
@given(TEXT, st.lists(ARCHIVE_IDS, min_size=2, max_size=20, unique=True))
def test_duplicate_names_are_distinct_safe_and_deterministic(name, archive_ids):
    got = [duplicate_name(name, i) for i in archive_ids]
    assert len(set(got)) == len(got)
    for archive_id, dup in zip(archive_ids, got, strict=True):
        assert is_safe_component(dup)
        assert safe_component(dup) == dup
        assert dup not in RESERVED_ROOT_NAMES
        assert dup == duplicate_name(name, archive_id)
        base = safe_component(name)
        if base is not None:
            assert dup != base


@SETTINGS
@given(st.lists(st.one_of(ARCHIVE_IDS, st.text(max_size=1100)), min_size=1, max_size=10,
                unique=True))
def test_archive_id_names_are_safe_and_distinct(archive_ids):
    got = [archive_id_name(i) for i in archive_ids]
    assert len(set(got)) == len(got)
    for name in got:
        assert is_safe_component(name)
        assert name not in RESERVED_ROOT_NAMES


@SETTINGS
@given(st.lists(st.tuples(TEXT, ARCHIVE_IDS), max_size=30, unique_by=lambda row: row[1]))
def test_a_vault_of_any_descriptions_gets_unique_safe_paths(rows):
    # What the namespace does: decode, fall back to the id, rename later clashes.
    taken: set[tuple[str, ...]] = set()
    for description, archive_id in rows:
        parts = decode_description(description).parts or (archive_id_name(archive_id),)
        if parts in taken:
            parts = parts[:-1] + (duplicate_name(parts[-1], archive_id),)
        assert parts not in taken
        assert_safe_parts(parts)
        taken.add(parts)


_SIMPLE_COMPONENT = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.,+=@~-]{0,30}", fullmatch=True)


@given(st.lists(_SIMPLE_COMPONENT, min_size=1, max_size=70))
def test_fast_path_for_plain_paths_agrees_with_the_general_decoder(components):
    text = "/".join(components)
    assert names.decode_description(text) == names._decode_general(text)
