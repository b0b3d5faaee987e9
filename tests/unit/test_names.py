"""Archive descriptions → names: the vectors of ../shared/reference.md ("Archive descriptions"),
vectors built here with each uploader's encoding, and hostile descriptions."""

import base64
import json
from datetime import UTC, datetime

import pytest

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

ARCHIVE_ID = (
    "NkbByEejwEggmBz2fTHgJrg0XBoDfjP4q6iu87-TjhqG6eGoOY9Z8i1_AUyUsuhPAdTqLHy8pTl5nfCFJmDl2yEZO"
    "Ni5L26Omw12vcs01MNGntHEQL8MBfGlqrEXAMPLEarchiveId"
)


# --- encoders, written from the format descriptions, to build more vectors -------------------

def mt2(filename: str, mtime: str = "20200102T030405Z") -> str:
    raw = json.dumps({"filename": filename, "mtime": mtime}, ensure_ascii=False).encode()
    return "mt2 " + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def mt1(filename: str, mtime: str = "20200102T030405Z") -> str:
    once = json.dumps({"filename": filename, "mtime": mtime}, ensure_ascii=False).encode()
    twice = once.decode("latin-1").encode("utf-8")
    return "mt1 " + base64.urlsafe_b64encode(twice).decode().rstrip("=")


def b64(path: str) -> str:
    return base64.b64encode(path.encode()).decode()


def fastglacier(path: str, version: int = 4, lm: str = "20191231T235959Z") -> str:
    ce = "<ce>aGVsbG8=</ce>" if version >= 3 else ""
    return f"<m><v>{version}</v><p>{b64(path)}</p><lm>{lm}</lm>{ce}</m>"


def cloudberry(path: str, modified: str = "20210304T050607Z") -> str:
    encoded = path.encode("utf-7").decode("ascii")
    return json.dumps({"Path": encoded, "UTCDateModified": modified, "Flags": 0})


def assert_safe(decoded: names.DecodedDescription) -> None:
    for part in decoded.parts:
        assert part not in ("", ".", "..")
        assert "/" not in part and "\x00" not in part
        assert len(part.encode("utf-8")) <= MAX_NAME_BYTES
    if decoded.parts:
        assert decoded.parts[0] not in RESERVED_ROOT_NAMES


# --- reference vectors -----------------------------------------------------------------------

def test_mt2_reference_vector():
    # reference.md, mt-aws-glacier mt2 example
    d = decode_description("mt2 eyJmaWxlbmFtZSI6ImZpbGUudHh0IiwibXRpbWUiOiIyMDEzMTIxOVQwODMzMDFaIn0")
    assert d == names.DecodedDescription(
        ("file.txt",), datetime(2013, 12, 19, 8, 33, 1, tzinfo=UTC), False, "mt2")


def test_mt1_reference_vector():
    # reference.md, mt-aws-glacier mt1 example (JSON UTF-8-encoded twice)
    d = decode_description("mt1 eyJmaWxlbmFtZSI6IsOQwq9Bw5DCryIsIm10aW1lIjoiMTk3MDAxMDFUMDAwMjAzWiJ9")
    assert d.parts == ("ЯAЯ",)
    assert d.mtime == datetime(1970, 1, 1, 0, 2, 3, tzinfo=UTC)
    assert d.format == "mt1"


def test_fastglacier_reference_path():
    # reference.md: <p>Z2xhY2llci1kZy5wZGY=</p> is glacier-dg.pdf
    d = decode_description("<m><v>4</v><p>Z2xhY2llci1kZy5wZGY=</p><lm>20120101T000000Z</lm></m>")
    assert d.parts == ("glacier-dg.pdf",)
    assert d.format == "fastglacier4"
    assert d.mtime == datetime(2012, 1, 1, tzinfo=UTC)
    assert not d.is_folder


def test_cloudberry_reference_utf7():
    # reference.md: dir2/+BEQEMAQ5BDs-3 is dir2/файл3
    d = decode_description(
        '{"Path": "dir2/+BEQEMAQ5BDs-3", "UTCDateModified": "20140102T030405Z", "Flags": 0}')
    assert d.parts == ("dir2", "файл3")
    assert d.mtime == datetime(2014, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert d.format == "cloudberry"


def test_qnap_reference_path_is_relative():
    # reference.md: QNAP Glacier app, paths start with "/"
    d = decode_description('{"path": "/sample/1234.pdf", "type": "file"}')
    assert d == names.DecodedDescription(("sample", "1234.pdf"), None, False, "qnap")


# --- self-built vectors ----------------------------------------------------------------------

PATHS = ["photos/2019/img.tar", "Документы/отчёт 2020.pdf", "日本語/ファイル.txt",
         "a b/c,d/e'f\"g.txt", "emoji/😀.png", "+plus+/C++ notes.txt"]


@pytest.mark.parametrize("path", PATHS)
def test_mt2_roundtrip(path):
    d = decode_description(mt2(path, "20200102T030405Z"))
    assert d.parts == tuple(path.split("/"))
    assert d.mtime == datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert d.format == "mt2"


@pytest.mark.parametrize("path", PATHS)
def test_mt1_roundtrip(path):
    d = decode_description(mt1(path))
    assert d.parts == tuple(path.split("/"))
    assert d.format == "mt1"


def test_mt_extra_words_after_the_payload_are_ignored():
    assert decode_description(mt2("a/b.txt") + " extra words").parts == ("a", "b.txt")


def test_mt1_payload_encoded_once_is_still_read():
    # Decoding twice fails for "café" encoded once, so mt1 falls back to a single decode.
    d = decode_description(mt2("café.txt").replace("mt2", "mt1"))
    assert d.parts == ("café.txt",)
    assert d.format == "mt1"


@pytest.mark.parametrize("version", [2, 3, 4])
@pytest.mark.parametrize("path", PATHS)
def test_fastglacier_versions(path, version):
    d = decode_description(fastglacier(path, version))
    assert d.parts == tuple(path.split("/"))
    assert d.format == f"fastglacier{version}"
    assert d.mtime == datetime(2019, 12, 31, 23, 59, 59, tzinfo=UTC)


def test_fastglacier_version_guessed_from_ce_when_v_missing():
    assert decode_description(f"<m><p>{b64('a')}</p><ce>x</ce></m>").format == "fastglacier3"
    assert decode_description(f"<m><p>{b64('a')}</p></m>").format == "fastglacier2"
    assert decode_description(f"<m><v>7</v><p>{b64('a')}</p></m>").format == "fastglacier4"


def test_fastglacier_non_ascii_decoded_as_utf8():
    d = decode_description(fastglacier("Фото/зима.jpg"))
    assert d.parts == ("Фото", "зима.jpg")


def test_fastglacier_folder_marker():
    d = decode_description(fastglacier("photos/2019/"))
    assert d.parts == ("photos", "2019")
    assert d.is_folder


def test_fastglacier_root_folder_marker_is_not_a_folder():
    d = decode_description(fastglacier("/"))
    assert d.parts == ()
    assert not d.is_folder


def test_qnap_hybrid_backup_sync_absolute_path_in_fastglacier():
    d = decode_description(fastglacier("/Public/docs/a.txt"))
    assert d.parts == ("Public", "docs", "a.txt")


def test_fastglacier_whitespace_inside_tags_and_quotes():
    desc = (f'  "< m >\n <v> 4 </v>< p >  {b64("x/y.txt")}  </ p ><lm>"20200101T000000Z"</lm>'
            f"< / m >"  '"  ')
    d = decode_description(desc)
    assert d.parts == ("x", "y.txt")
    assert d.format == "fastglacier4"
    assert d.mtime == datetime(2020, 1, 1, tzinfo=UTC)


def test_fastglacier_base64_wrapped_and_unpadded():
    encoded = b64("some/long/path/name.txt").rstrip("=")
    wrapped = encoded[:10] + "\n " + encoded[10:]
    d = decode_description(f"<m><v>4</v><p>{wrapped}</p></m>")
    assert d.parts == ("some", "long", "path", "name.txt")


def test_fastglacier_v1():
    d = decode_description(
        f"<ArchiveMetadata><Path>{b64('dir/файл.doc')}</Path><Size>10</Size></ArchiveMetadata>")
    assert d.parts == ("dir", "файл.doc")
    assert d.format == "fastglacier1"
    assert d.mtime is None


def test_fastglacier_v1_folder_and_case_insensitive_tags():
    d = decode_description(f"<archivemetadata> <path>{b64('dir/')}</path></archivemetadata>")
    assert d.parts == ("dir",) and d.is_folder


@pytest.mark.parametrize("path", PATHS + ["dir+/a-b+c.txt", "x/~tilde\\back"])
def test_cloudberry_roundtrip_through_python_utf7(path):
    d = decode_description(cloudberry(path))
    assert d.parts == tuple(path.replace("\\", "/").split("/"))
    assert d.format == "cloudberry"
    assert d.mtime == datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)


def test_cloudberry_windows_separators():
    d = decode_description('{"Path": "C:\\\\Users\\\\bob\\\\a.txt"}')
    assert d.parts == ("C:", "Users", "bob", "a.txt")


def test_qnap_folder_type():
    d = decode_description('{"path": "/sample/dir", "type": "folder"}')
    assert d.parts == ("sample", "dir") and d.is_folder


@pytest.mark.parametrize("desc,parts", [
    ("backup-2019.tar.gz", ("backup-2019.tar.gz",)),
    ("photos/2019/img.tar", ("photos", "2019", "img.tar")),
    ("C:\\Users\\bob\\file.txt", ("C:", "Users", "bob", "file.txt")),
    ("  spaced name.txt  ", ("spaced name.txt",)),
    ('"quoted/name.txt"', ("quoted", "name.txt")),
    ("a//b///c", ("a", "b", "c")),
    ("mtime 2020", ("mtime 2020",)),
])
def test_plain_text(desc, parts):
    d = decode_description(desc)
    assert d.parts == parts
    assert d.format == "plain"
    assert d.mtime is None


@pytest.mark.parametrize("desc", ["", "   ", '""', "/", "./.", "\\\\", "//./"])
def test_nothing_usable_gives_no_parts(desc):
    d = decode_description(desc)
    assert d.parts == ()
    assert d.format == "none"


@pytest.mark.parametrize("mtime", ["2013-12-19T08:33:01Z", "20131332T083301Z", "20130229T000000Z",
                                   "20130101T250000Z", "x", "00000101T000000Z"])
def test_bad_mtime_is_none_not_an_error(mtime):
    d = decode_description(mt2("a.txt", mtime))
    assert d.parts == ("a.txt",)
    assert d.mtime is None


def test_mt_mtime_of_wrong_type_is_none():
    raw = json.dumps({"filename": "a", "mtime": 12345}).encode()
    d = decode_description("mt2 " + base64.urlsafe_b64encode(raw).decode())
    assert d.parts == ("a",) and d.mtime is None


# --- broken encodings fall back to plain text in one component ------------------------------

@pytest.mark.parametrize("desc,part", [
    ("mt2 xxx", "mt2 xxx"),  # not base64 of JSON
    ("mt2 !!!", "mt2 !!!"),  # not base64 at all
    ("mt2 " + base64.urlsafe_b64encode(b"\xff\xfe{").decode(), None),  # not UTF-8
    ("mt2 " + base64.urlsafe_b64encode(b'{"mtime": "x"}').decode(), None),  # no filename
    ("mt2 " + base64.urlsafe_b64encode(b'["a"]').decode(), None),  # not an object
    ("<m><v>4</v><p>!!!not base64</p></m>", "<m><v>4<_v><p>!!!not base64<_p><_m>"),
    ("<m><v>4</v></m>", "<m><v>4<_v><_m>"),  # no path
    ("<m><v>4</v><p>abc", None),  # markup cut short
    ("<ArchiveMetadata><Path>%%%</Path></ArchiveMetadata>", None),
    ('{"Path": 5}', '{"Path": 5}'),
    ('{"Path": "a/b", }', '{"Path": "a_b", }'),  # broken JSON
    ('{"other": "a/b"}', '{"other": "a_b"}'),  # JSON, but no known key
    ("{" * 5000 + "}", "{" * 5000 + "}"),  # nesting deep enough to recurse
])
def test_broken_structured_descriptions_become_one_plain_name(desc, part):
    d = decode_description(desc)
    assert_safe(d)
    assert d.format == "plain"
    if part is None:
        part = desc.strip().replace("/", "_")
    assert d.parts == (names._fit(part),)


def test_broken_utf7_is_kept_literally():
    d = decode_description('{"Path": "a+!!/b+Z-/c+-d"}')
    # "+!!" is not a base64 run, "+Z-" is too short for one character, "+-" is "+"
    assert d.parts == ("a+!!", "b+Z-", "c+d")


def test_utf7_lone_surrogate_becomes_replacement_character():
    # "+2D3-" is base64 of 0xD83D, half a surrogate pair
    assert decode_utf7("x+2D0-y") == "x\ufffdy"
    d = decode_description('{"Path": "x+2D0-y"}')
    d.parts[0].encode("utf-8")


# --- hostile descriptions --------------------------------------------------------------------

@pytest.mark.parametrize("desc", [
    "../../etc/passwd", "..\\..\\windows", mt2("../../etc/passwd"), fastglacier("../../x"),
    cloudberry("../../x"), '{"path": "/../../x"}', mt2("a/../../b"),
])
def test_traversal_never_leaves_the_vault(desc):
    d = decode_description(desc)
    assert_safe(d)
    assert ".." not in d.parts
    assert d.parts.count("__") >= 1  # ".." is shown, as "__", never followed


def test_dotdot_and_dot_rules():
    assert decode_description("./a/./../b").parts == ("a", "__", "b")
    assert safe_component("..") == "__"
    assert safe_component(".") is None
    assert safe_component("") is None
    assert safe_component("...") == "..."
    assert safe_component("..a") == "..a"


@pytest.mark.parametrize("desc", ["/abs/path", mt2("/abs/path"), fastglacier("/abs/path"),
                                  '{"path": "/abs/path"}', cloudberry("/abs/path")])
def test_absolute_paths_become_relative(desc):
    assert decode_description(desc).parts == ("abs", "path")


@pytest.mark.parametrize("desc", ["a\x00b", mt2("a\x00b"), fastglacier("a\x00b"),
                                  '{"path": "a\\u0000b"}'])
def test_nul_is_replaced(desc):
    assert decode_description(desc).parts == ("a_b",)


def test_control_characters_are_replaced():
    for ch in ["\x01", "\x1b", "\x7f", "\x85", "\x9f", "\n", "\t", "\u202e"]:
        assert safe_component(f"a{ch}b") == "a_b", repr(ch)
    assert decode_description(mt2("evil\u202egpj.exe")).parts == ("evil_gpj.exe",)


def test_slash_inside_a_component_is_replaced():
    assert safe_component("a/b") == "a_b"


def test_reserved_root_name_is_renamed_only_at_the_root():
    assert decode_description(".by-id").parts == ("_.by-id",)
    assert decode_description(".by-id/x").parts == ("_.by-id", "x")
    assert decode_description("/.by-id/x").parts == ("_.by-id", "x")
    assert decode_description(mt2(".by-id/" + ARCHIVE_ID)).parts == ("_.by-id", ARCHIVE_ID)
    assert decode_description("a/.by-id").parts == ("a", ".by-id")


def test_1024_char_name_is_cut_to_255_bytes_keeping_extension():
    d = decode_description("x" * 1020 + ".pdf")
    (part,) = d.parts
    assert len(part.encode()) == 255
    assert part.endswith(".pdf") and part.startswith("xxx")


def test_300_byte_multibyte_component_cut_on_character_boundary():
    name = "я" * 150  # 300 bytes
    part = safe_component(name)
    assert part == "я" * 127  # 254 bytes: 255 would split a character
    part = safe_component("日" * 100 + ".txt")
    assert part.endswith(".txt") and len(part.encode()) <= 255
    part.encode("utf-8")  # strict


def test_long_extension_is_not_kept_whole():
    name = "a" * 100 + "." + "b" * 300
    part = safe_component(name)
    assert len(part.encode()) == 255 and part == name[:255]


def test_depth_is_bounded_and_file_name_kept():
    d = decode_description("/".join(f"d{i}" for i in range(200)) + "/file.txt")
    assert len(d.parts) == names.MAX_DEPTH
    assert d.parts[-1] == "file.txt"
    assert d.parts[:3] == ("d0", "d1", "d2")


def test_surrogates_are_joined_or_replaced():
    assert safe_component("\ud83d\ude00.png") == "😀.png"  # a pair split into two code points
    assert safe_component("a\udcffb") == "a\ufffdb"
    d = decode_description('{"path": "a\\ud800b"}')
    assert d.parts == ("a\ufffdb",)


def test_undecodable_utf8_in_base64_path_costs_one_character():
    raw = base64.b64encode(b"dir/caf\xe9.txt").decode()
    d = decode_description(f"<m><v>4</v><p>{raw}</p></m>")
    assert d.parts == ("dir", "caf\ufffd.txt")


def test_only_dots_and_slashes():
    for desc in ["./././", "/././/", "....", "../.."]:
        d = decode_description(desc)
        assert_safe(d)
    assert decode_description("....").parts == ("....",)
    assert decode_description("../..").parts == ("__", "__")


def test_huge_description_is_handled_as_plain_text():
    d = decode_description("<m>" + "<p>" * 100_000 + "</m>")
    assert_safe(d)
    assert d.format == "plain"


# --- duplicate_name / archive_id_name --------------------------------------------------------

def test_duplicate_name_keeps_extension_and_is_deterministic():
    name = duplicate_name("report.pdf", ARCHIVE_ID)
    assert name == duplicate_name("report.pdf", ARCHIVE_ID)
    assert name.startswith("report (") and name.endswith(").pdf")
    tag = name[len("report ("):-len(").pdf")]
    assert len(tag) == names.DUPLICATE_TAG_HEX and int(tag, 16) >= 0
    assert duplicate_name("report.pdf", ARCHIVE_ID[:-1] + "X") != name


def test_duplicate_name_without_extension_and_dotfiles():
    assert duplicate_name("README", "a").startswith("README (")
    assert duplicate_name(".bashrc", "a").startswith(".bashrc (")
    assert duplicate_name("..", "a").startswith("__ (")


def test_duplicate_name_of_a_long_name_fits_and_keeps_tag():
    long = "я" * 200 + ".tar.gz"
    a, b = duplicate_name(long, "id-a"), duplicate_name(long, "id-b")
    assert a != b
    for name in (a, b):
        assert len(name.encode()) <= MAX_NAME_BYTES
        assert name.endswith(").gz")
        assert safe_component(name) == name


def test_duplicate_name_of_unusable_name_is_still_safe():
    name = duplicate_name("", "id")
    assert safe_component(name) == name


def test_archive_id_name_is_the_id_for_real_ids():
    assert archive_id_name(ARCHIVE_ID) == ARCHIVE_ID
    assert archive_id_name("-_abc") == "-_abc"


def test_archive_id_name_for_odd_ids_is_safe_and_distinct():
    odd = ["a" * 1024, "a" * 1023 + "b", "a/b", ".", "..", ".by-id", ""]
    got = [archive_id_name(i) for i in odd]
    assert len(set(got)) == len(odd)
    for name in got:
        assert safe_component(name) == name
        assert name not in RESERVED_ROOT_NAMES
        assert len(name.encode()) <= MAX_NAME_BYTES
