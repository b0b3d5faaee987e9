"""Select jobs in the emulator, through unmodified boto3 and the AWS CLI, with moto's S3 server
as the output bucket. Every result is checked against the same query computed with Python's
csv module over the same rows."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from botocore.exceptions import ClientError

from glacierfs.sim import s3server
from glacierfs.sim.testing import SimProcess, upload, wait_job

BUCKET = "select-out"
VAULT = "sel"
AWS = shutil.which("aws") or os.path.join(os.path.dirname(os.sys.executable), "aws")

PEOPLE = [["id", "name", "city", "amount", "joined"],
          ["1", "Ann", "Paris", "120", "2019-03-01"],
          ["2", "Bob", "New York", "75.5", "2020-07-15"],
          ["3", "Chloé", "Paris", "", "2021-01-31"],
          ["4", 'Dan "the man"', "Oslo, Norway", "300", "2018-12-24"],
          ["5", "Eve", "berlin", "42", "2022-02-02"],
          ["6", "Fay", "Paris\nLeft Bank", "9", "2017-06-30"]]


@pytest.fixture(scope="module")
def s3():
    local = s3server.start(buckets=(BUCKET,))
    yield local
    local.stop()


@pytest.fixture(scope="module")
def sim(s3, tmp_path_factory):
    base = tmp_path_factory.mktemp("simsel")
    proc = SimProcess(base / "data", args=["--s3-endpoint", s3.url, "--delay", "Standard=60",
                                           "--delay", "Expedited=0.5", "--delay", "Bulk=120"],
                      log_path=base / "sim.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def glacier(sim):
    client = sim.client(max_attempts=1)
    client.create_vault(vaultName=VAULT)
    return client


def csv_bytes(rows, **fmt) -> bytes:
    out = io.StringIO()
    csv.writer(out, **{"lineterminator": "\n", **fmt}).writerows(rows)
    return out.getvalue().encode()


def select_params(expression: str, inp: dict | None = None, out: dict | None = None) -> dict:
    return {"Expression": expression, "ExpressionType": "SQL",
            "InputSerialization": {"csv": inp or {}}, "OutputSerialization": {"csv": out or {}}}


def start(glacier, archive: str, expression: str, inp=None, out=None, prefix="q",
          tier="Expedited", **s3) -> dict:
    return glacier.initiate_job(vaultName=VAULT, jobParameters={
        "Type": "select", "ArchiveId": archive, "Tier": tier,
        "SelectParameters": select_params(expression, inp, out),
        "OutputLocation": {"S3": {"BucketName": BUCKET, "Prefix": prefix, **s3}}})


def finish(sim, glacier, job_id: str) -> dict:
    sim.complete_jobs(job_id)
    return wait_job(glacier, VAULT, job_id, timeout=30)


def results(s3, path: str) -> str:
    client = s3.client()
    manifest = client.get_object(Bucket=BUCKET, Key=path + "result_manifest.txt")
    keys = [line.split("/", 3)[3] for line in manifest["Body"].read().decode().splitlines()]
    assert all(k.startswith(path + "results/") for k in keys)
    return "".join(client.get_object(Bucket=BUCKET, Key=k)["Body"].read().decode()
                   for k in keys)


def run(sim, glacier, s3, archive, expression, inp=None, out=None) -> str:
    job = start(glacier, archive, expression, inp, out)
    done = finish(sim, glacier, job["jobId"])
    assert done["StatusCode"] == "Succeeded", done.get("StatusMessage")
    return results(s3, job["jobOutputPath"])


def parsed(text: str, **fmt) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline=""), **fmt))


def code(exc) -> tuple[str, int]:
    err = exc.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture(scope="module")
def people(glacier) -> str:
    return upload(glacier, VAULT, csv_bytes(PEOPLE), "people.csv")


@pytest.mark.parametrize("mode", ["USE", "IGNORE", "NONE", "Use", None])
def test_header_modes_select_star(sim, glacier, s3, people, mode):
    inp = {"FileHeaderInfo": mode} if mode else {}
    text = run(sim, glacier, s3, people, "SELECT * FROM archive", inp)
    skip = 1 if mode and mode.upper() in ("USE", "IGNORE") else 0
    assert parsed(text) == PEOPLE[skip:]


def test_positions_and_names(sim, glacier, s3, people):
    by_name = run(sim, glacier, s3, people, "SELECT s.name, s.\"city\" FROM archive s "
                  "WHERE s.city = 'Paris'", {"FileHeaderInfo": "USE"})
    expected = [[r[1], r[2]] for r in PEOPLE[1:] if r[2] == "Paris"]
    assert parsed(by_name) == expected
    by_pos = run(sim, glacier, s3, people, "SELECT _2, _3 FROM archive WHERE _3 = 'Paris'",
                 {"FileHeaderInfo": "IGNORE"})
    assert parsed(by_pos) == expected
    # NONE: the header row is a record like any other
    none = run(sim, glacier, s3, people, "SELECT _1 AS first FROM archive", {})
    assert parsed(none) == [[r[0]] for r in PEOPLE]


def test_quoted_names_are_exact_and_object_names_the_archive(sim, glacier, s3):
    archive = upload(glacier, VAULT, b"Name,name,CAST\nA,b,c\n", "case.csv")
    text = run(sim, glacier, s3, archive, 'SELECT s."Name", s."name", s."CAST" FROM object s',
               {"FileHeaderInfo": "USE"})
    assert parsed(text) == [["A", "b", "c"]]


def _num(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


WHERE_CASES = [
    ("amount > 50", lambda r: _num(r[3]) is not None and _num(r[3]) > 50),
    ("amount >= 42 AND amount <= 120", lambda r: _num(r[3]) is not None and
     42 <= _num(r[3]) <= 120),
    ("amount BETWEEN 9 AND 75.5", lambda r: _num(r[3]) is not None and 9 <= _num(r[3]) <= 75.5),
    ("city IN ('Oslo, Norway', 'berlin')", lambda r: r[2] in ("Oslo, Norway", "berlin")),
    ("id NOT IN (1, 2, 3)", lambda r: int(r[0]) not in (1, 2, 3)),
    ("name LIKE '%a%'", lambda r: "a" in r[1]),
    ("name NOT LIKE 'B%'", lambda r: not r[1].startswith("B")),
    ("city LIKE 'paris%'", lambda r: r[2].startswith("paris")),  # LIKE is case-sensitive
    ("NOT (city = 'Paris') OR id = 1", lambda r: r[2] != "Paris" or r[0] == "1"),
    ("amount = ''", lambda r: r[3] == ""),
    ("city <> 'Paris' AND amount * 2 > 100", lambda r: r[2] != "Paris" and
     _num(r[3]) is not None and _num(r[3]) * 2 > 100),
    ("CAST(id AS INT) % 2 = 0", lambda r: int(r[0]) % 2 == 0),
    ("LOWER(city) = 'berlin' OR UPPER(name) = 'ANN'", lambda r: r[2].lower() == "berlin" or
     r[1].upper() == "ANN"),
    ("CHAR_LENGTH(name) = 3", lambda r: len(r[1]) == 3),
    ("joined < '2019-06-01'", lambda r: r[4] < "2019-06-01"),
    ("TO_TIMESTAMP(joined) > TO_TIMESTAMP('2020-01-01')", lambda r: r[4] > "2020-01-01"),
    ("EXTRACT(YEAR FROM TO_TIMESTAMP(joined)) = 2021", lambda r: r[4].startswith("2021")),
    ("_9 IS NULL AND name IS NOT NULL", lambda r: True),
]


@pytest.mark.parametrize("where,keep", WHERE_CASES, ids=[w for w, _ in WHERE_CASES])
def test_where(sim, glacier, s3, people, where, keep):
    text = run(sim, glacier, s3, people, f"SELECT * FROM archive WHERE {where}",
               {"FileHeaderInfo": "USE"})
    assert parsed(text) == [r for r in PEOPLE[1:] if keep(r)]


def test_expressions_in_the_select_list(sim, glacier, s3, people):
    expression = ("SELECT id, UPPER(name), CHAR_LENGTH(city), CAST(id AS INT) * 10 + 1, "
                  "SUBSTRING(name FROM 2 FOR 2), SUBSTRING(name, 1, 1), TRIM(LEADING 'B' FROM name), "
                  "name || '!', CASE WHEN city = 'Paris' THEN 'fr' ELSE 'other' END, "
                  "COALESCE(NULLIF(amount, ''), 'none'), id = '1', "
                  "TO_STRING(TO_TIMESTAMP(joined), 'y-MM-dd'), "
                  "DATE_ADD(day, 1, TO_TIMESTAMP('2019-12-31')), "
                  "DATE_DIFF(year, TO_TIMESTAMP('2000'), TO_TIMESTAMP(joined)) "
                  "FROM archive WHERE id IN ('1', '2', '3')")
    text = run(sim, glacier, s3, people, expression, {"FileHeaderInfo": "USE"})
    expected = []
    for r in PEOPLE[1:4]:
        expected.append([r[0], r[1].upper(), str(len(r[2])), str(int(r[0]) * 10 + 1), r[1][1:3],
                         r[1][:1], r[1].lstrip("B"), r[1] + "!",
                         "fr" if r[2] == "Paris" else "other", r[3] or "none",
                         "true" if r[0] == "1" else "false", r[4],
                         "2020-01-01T00:00:00Z", str(int(r[4][:4]) - 2000)])
    assert parsed(text) == expected


def test_input_and_output_serialization(sim, glacier, s3):
    rows = [["k", "v"], ["a;b", "it's"], ["c", "x|y"], ["d", "plain"]]
    inp = {"FileHeaderInfo": "USE", "FieldDelimiter": ";", "RecordDelimiter": "|",
           "QuoteCharacter": "'", "QuoteEscapeCharacter": "\\", "Comments": "#"}
    # the comment ends at the first record delimiter, so write it as its own record
    data = b"# a comment|" + csv_bytes(rows, delimiter=";", quotechar="'", escapechar="\\",
                                       doublequote=False, lineterminator="|",
                                       quoting=csv.QUOTE_ALL)
    archive = upload(glacier, VAULT, data, "odd.csv")
    for out, fmt in [
        ({"QuoteFields": "ALWAYS", "FieldDelimiter": "\t", "RecordDelimiter": "\r\n"},
         {"delimiter": "\t", "quoting": csv.QUOTE_ALL, "lineterminator": "\r\n"}),
        ({"QuoteFields": "ASNEEDED", "QuoteCharacter": "'", "QuoteEscapeCharacter": "\\",
          "FieldDelimiter": "|"},
         {"delimiter": "|", "quotechar": "'", "escapechar": "\\", "doublequote": False,
          "lineterminator": "\n"}),
        ({}, {"lineterminator": "\n"}),
    ]:
        text = run(sim, glacier, s3, archive, "SELECT * FROM archive", inp, out)
        want = io.StringIO()
        csv.writer(want, **fmt).writerows(rows[1:])
        assert text == want.getvalue(), out


def test_output_location_fields_and_job_description(sim, glacier, s3, people):
    location = {"Encryption": {"EncryptionType": "AES256"}, "StorageClass": "STANDARD_IA",
                "Tagging": {"team": "data"}, "UserMetadata": {"origin": "glacier"},
                "CannedACL": "bucket-owner-full-control"}
    job = start(glacier, people, "SELECT name FROM archive WHERE id = '1'",
                {"FileHeaderInfo": "USE"}, {"QuoteFields": "ALWAYS"}, prefix="loc/deep",
                tier="Bulk", **location)
    job_id, path = job["jobId"], job["jobOutputPath"]
    assert path == f"loc/deep/{job_id}/"
    client = s3.client()
    placeholder = json.loads(client.get_object(Bucket=BUCKET, Key=path + "job.txt")["Body"]
                             .read())
    assert placeholder["JobId"] == job_id and placeholder["Action"] == "Select"
    running = glacier.describe_job(vaultName=VAULT, jobId=job_id)
    assert running["StatusCode"] == "InProgress" and running["Tier"] == "Bulk"
    assert running["Action"] == "Select" and running["ArchiveId"] == people
    assert running["JobOutputPath"] == path
    assert running["SelectParameters"]["Expression"] == "SELECT name FROM archive WHERE id = '1'"
    assert running["SelectParameters"]["InputSerialization"] == {"csv": {"FileHeaderInfo": "USE"}}
    assert running["OutputLocation"]["S3"]["StorageClass"] == "STANDARD_IA"
    assert "InventoryRetrievalParameters" not in running
    listed = [j for j in glacier.list_jobs(vaultName=VAULT)["JobList"] if j["JobId"] == job_id]
    assert listed[0]["Action"] == "Select" and listed[0]["JobOutputPath"] == path
    with pytest.raises(ClientError) as exc:
        glacier.get_job_output(vaultName=VAULT, jobId=job_id)
    assert code(exc) == ("InvalidParameterValueException", 400)
    assert finish(sim, glacier, job_id)["StatusCode"] == "Succeeded"
    assert results(s3, path) == '"Ann"\n'
    manifest = client.get_object(Bucket=BUCKET, Key=path + "result_manifest.txt")["Body"].read()
    part = manifest.decode().split()[0].split("/", 3)[3]
    head = client.head_object(Bucket=BUCKET, Key=part)
    assert head["StorageClass"] == "STANDARD_IA" and head["ServerSideEncryption"] == "AES256"
    assert head["Metadata"] == {"origin": "glacier"}
    tags = client.get_object_tagging(Bucket=BUCKET, Key=part)["TagSet"]
    assert tags == [{"Key": "team", "Value": "data"}]
    assert "Contents" not in client.list_objects_v2(Bucket=BUCKET, Prefix=path + "errors/")


def test_tiers_and_delays(sim, glacier, s3, people):
    sim.set_delays(Expedited=0.5, Bulk=120)
    fast = start(glacier, people, "SELECT * FROM archive", tier="Expedited")
    slow = start(glacier, people, "SELECT * FROM archive", tier="Bulk")
    done = wait_job(glacier, VAULT, fast["jobId"], timeout=20)
    assert done["StatusCode"] == "Succeeded"
    assert parsed(results(s3, fast["jobOutputPath"])) == PEOPLE
    assert glacier.describe_job(vaultName=VAULT, jobId=slow["jobId"])["Completed"] is False
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=slow["jobOutputPath"])
    assert [o["Key"] for o in listing["Contents"]] == [slow["jobOutputPath"] + "job.txt"]
    default = glacier.initiate_job(vaultName=VAULT, jobParameters={
        "Type": "select", "ArchiveId": people,
        "SelectParameters": select_params("SELECT * FROM archive"),
        "OutputLocation": {"S3": {"BucketName": BUCKET, "Prefix": "t"}}})
    assert glacier.describe_job(vaultName=VAULT, jobId=default["jobId"])["Tier"] == "Standard"


def test_many_rows_make_several_parts(sim, glacier, s3):
    rows = [[str(i), f"name-{i}", "x" * 40] for i in range(12000)]
    archive = upload(glacier, VAULT, csv_bytes(rows), "big.csv")
    job = start(glacier, archive, "SELECT * FROM archive WHERE CAST(_1 AS INT) % 3 = 0")
    assert finish(sim, glacier, job["jobId"])["StatusCode"] == "Succeeded"
    manifest = s3.client().get_object(Bucket=BUCKET,
                                      Key=job["jobOutputPath"] + "result_manifest.txt")
    assert len(manifest["Body"].read().splitlines()) >= 2
    got = parsed(results(s3, job["jobOutputPath"]))  # no order is promised: sort
    assert sorted(got, key=lambda r: int(r[0])) == [r for r in rows if int(r[0]) % 3 == 0]


BASE = {"Type": "select", "Tier": "Expedited"}


def _params(archive: str, **changes) -> dict:
    params = {**BASE, "ArchiveId": archive,
              "SelectParameters": select_params("SELECT * FROM archive"),
              "OutputLocation": {"S3": {"BucketName": BUCKET, "Prefix": "bad"}}}
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    return params


def _sel(expression="SELECT * FROM archive", inp=None, out=None, **extra) -> dict:
    return {**select_params(expression, inp, out), **extra}


SYNC_ERRORS = [
    ("no SelectParameters", {"SelectParameters": None}, "MissingParameterValueException"),
    ("no OutputLocation", {"OutputLocation": None}, "MissingParameterValueException"),
    ("no S3", {"OutputLocation": {}}, "MissingParameterValueException"),
    ("no bucket", {"OutputLocation": {"S3": {"Prefix": "x"}}}, "MissingParameterValueException"),
    ("no prefix", {"OutputLocation": {"S3": {"BucketName": BUCKET}}},
     "MissingParameterValueException"),
    ("no expression", {"SelectParameters": {"ExpressionType": "SQL"}},
     "MissingParameterValueException"),
    ("no expression type", {"SelectParameters": {"Expression": "SELECT * FROM archive"}},
     "MissingParameterValueException"),
    ("expression type", {"SelectParameters": _sel(ExpressionType="XPATH")},
     "InvalidParameterValueException"),
    ("unparsable", {"SelectParameters": _sel("SELEC * FROM archive")},
     "InvalidParameterValueException"),
    ("other table", {"SelectParameters": _sel("SELECT * FROM s3object")},
     "InvalidParameterValueException"),
    ("reserved keyword", {"SelectParameters": _sel("SELECT s.CAST FROM archive s")},
     "InvalidParameterValueException"),
    ("count", {"SelectParameters": _sel("SELECT COUNT(*) FROM archive")},
     "InvalidParameterValueException"),
    ("sum", {"SelectParameters": _sel("SELECT SUM(_1) FROM archive")},
     "InvalidParameterValueException"),
    ("group by", {"SelectParameters": _sel("SELECT _1 FROM archive GROUP BY _1")},
     "InvalidParameterValueException"),
    ("order by", {"SelectParameters": _sel("SELECT _1 FROM archive ORDER BY _1")},
     "InvalidParameterValueException"),
    ("limit", {"SelectParameters": _sel("SELECT _1 FROM archive LIMIT 5")},
     "InvalidParameterValueException"),
    ("join", {"SelectParameters": _sel("SELECT * FROM archive a JOIN archive b ON a._1 = b._1")},
     "InvalidParameterValueException"),
    ("distinct", {"SelectParameters": _sel("SELECT DISTINCT _1 FROM archive")},
     "InvalidParameterValueException"),
    ("too long", {"SelectParameters": _sel("SELECT * FROM archive WHERE _1 = '"
                                           + "x" * 128_001 + "'")},
     "InvalidParameterValueException"),
    ("header info", {"SelectParameters": _sel(inp={"FileHeaderInfo": "FIRST"})},
     "InvalidParameterValueException"),
    ("field delimiter", {"SelectParameters": _sel(inp={"FieldDelimiter": ";;"})},
     "InvalidParameterValueException"),
    ("field delimiter range", {"SelectParameters": _sel(inp={"FieldDelimiter": "\x01"})},
     "InvalidParameterValueException"),
    ("record delimiter", {"SelectParameters": _sel(inp={"RecordDelimiter": "ab"})},
     "InvalidParameterValueException"),
    ("quote", {"SelectParameters": _sel(inp={"QuoteCharacter": "''"})},
     "InvalidParameterValueException"),
    ("escape", {"SelectParameters": _sel(inp={"QuoteEscapeCharacter": "\\\\"})},
     "InvalidParameterValueException"),
    ("comments", {"SelectParameters": _sel(inp={"Comments": "//"})},
     "InvalidParameterValueException"),
    ("quote fields", {"SelectParameters": _sel(out={"QuoteFields": "SOMETIMES"})},
     "InvalidParameterValueException"),
    ("output delimiter", {"SelectParameters": _sel(out={"FieldDelimiter": "ab"})},
     "InvalidParameterValueException"),
    ("storage class", {"OutputLocation": {"S3": {"BucketName": BUCKET, "Prefix": "x",
                                                 "StorageClass": "GLACIER"}}},
     "InvalidParameterValueException"),
    ("canned acl", {"OutputLocation": {"S3": {"BucketName": BUCKET, "Prefix": "x",
                                              "CannedACL": "everyone"}}},
     "InvalidParameterValueException"),
    ("encryption", {"OutputLocation": {"S3": {"BucketName": BUCKET, "Prefix": "x",
                                              "Encryption": {"EncryptionType": "ROT13"}}}},
     "InvalidParameterValueException"),
    ("grantee type", {"OutputLocation": {"S3": {"BucketName": BUCKET, "Prefix": "x",
                      "AccessControlList": [{"Grantee": {"Type": "Robot", "ID": "1"},
                                             "Permission": "READ"}]}}},
     "InvalidParameterValueException"),
    ("permission", {"OutputLocation": {"S3": {"BucketName": BUCKET, "Prefix": "x",
                    "AccessControlList": [{"Grantee": {"Type": "CanonicalUser", "ID": "1"},
                                           "Permission": "ALL"}]}}},
     "InvalidParameterValueException"),
    ("prefix too long", {"OutputLocation": {"S3": {"BucketName": BUCKET, "Prefix": "p" * 600}}},
     "InvalidParameterValueException"),
    ("no such bucket", {"OutputLocation": {"S3": {"BucketName": "nobucket", "Prefix": "x"}}},
     "InvalidParameterValueException"),
    # Not a 503 to retry for ever: a name no S3 can have is the caller's mistake.
    ("impossible bucket name", {"OutputLocation": {"S3": {"BucketName": "Bad_Bucket!",
                                                          "Prefix": "x"}}},
     "InvalidParameterValueException"),
    ("ranged", {"RetrievalByteRange": "0-1048575"}, "InvalidParameterValueException"),
    ("tier", {"Tier": "Fast"}, "InvalidParameterValueException"),
    ("no archive id", {"ArchiveId": None}, "MissingParameterValueException"),
]


@pytest.mark.parametrize("name,changes,error", SYNC_ERRORS, ids=[c[0] for c in SYNC_ERRORS])
def test_synchronous_validation(sim, glacier, s3, people, name, changes, error):
    before = len(glacier.list_jobs(vaultName=VAULT)["JobList"])
    with pytest.raises(ClientError) as exc:
        glacier.initiate_job(vaultName=VAULT, jobParameters=_params(people, **changes))
    assert code(exc) == (error, 400)
    assert len(glacier.list_jobs(vaultName=VAULT)["JobList"]) == before  # no job left behind


def test_unknown_archive_is_404(glacier):
    with pytest.raises(ClientError) as exc:
        glacier.initiate_job(vaultName=VAULT, jobParameters=_params("A" * 138))
    assert code(exc) == ("ResourceNotFoundException", 404)


@pytest.mark.parametrize("data,expression,inp,message", [
    (bytes(range(256)) * 4, "SELECT * FROM archive", {}, "not CSV"),
    (b"a,b\n1,x\n", "SELECT CAST(_2 AS INT) FROM archive", {}, "CAST failed"),
    (b"a,b\n1,2\n", "SELECT s.nope FROM archive s", {"FileHeaderInfo": "USE"}, "nope"),
    (b"a,b\n1,2\n", "SELECT a FROM archive", {"FileHeaderInfo": "NONE"}, "header"),
    (b"Name,name\n1,2\n", "SELECT s.name FROM archive s", {"FileHeaderInfo": "USE"},
     "ambiguous"),
])
def test_errors_while_running(sim, glacier, s3, data, expression, inp, message):
    archive = upload(glacier, VAULT, data, "e.bin")
    job = start(glacier, archive, expression, inp)  # accepted: the archive is not read yet
    done = finish(sim, glacier, job["jobId"])
    assert done["StatusCode"] == "Failed" and message in done["StatusMessage"]
    client = s3.client()
    path = job["jobOutputPath"]
    manifest = client.get_object(Bucket=BUCKET, Key=path + "error_manifest.txt")
    keys = [line.split("/", 3)[3] for line in manifest["Body"].read().decode().splitlines()]
    assert keys and all(k.startswith(path + "errors/") for k in keys)
    first = client.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read().decode()
    assert message in first
    with pytest.raises(ClientError):
        client.head_object(Bucket=BUCKET, Key=path + "result_manifest.txt")


def test_aws_cli_initiate_select_job(sim, glacier, s3, people, tmp_path):
    params = {"Type": "select", "ArchiveId": people, "Tier": "Expedited",
              "SelectParameters": select_params(
                  "SELECT s.id, s.amount FROM archive s WHERE s.amount > 100",
                  {"FileHeaderInfo": "USE"}, {"QuoteFields": "ASNEEDED"}),
              "OutputLocation": {"S3": {"BucketName": BUCKET, "Prefix": "cli",
                                        "StorageClass": "STANDARD"}}}
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(params))
    out = subprocess.run([AWS, "glacier", "initiate-job", "--account-id", "-", "--vault-name",
                          VAULT, "--job-parameters", f"file://{spec}", "--endpoint-url", sim.url],
                         env=sim.env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    job_id = answer["jobId"]
    assert answer["jobOutputPath"] == f"cli/{job_id}/"
    sim.complete_jobs(job_id)
    described = subprocess.run([AWS, "glacier", "describe-job", "--account-id", "-",
                                "--vault-name", VAULT, f"--job-id={job_id}", "--endpoint-url",
                                sim.url], env=sim.env(), capture_output=True, text=True,
                               timeout=60)
    assert described.returncode == 0, described.stderr
    job = json.loads(described.stdout)
    assert job["Action"] == "Select" and job["StatusCode"] == "Succeeded"
    assert job["SelectParameters"]["InputSerialization"]["csv"]["FileHeaderInfo"] == "USE"
    assert job["OutputLocation"]["S3"]["Prefix"] == "cli"
    want = [[r[0], r[3]] for r in PEOPLE[1:] if _num(r[3]) is not None and _num(r[3]) > 100]
    assert parsed(results(s3, answer["jobOutputPath"])) == want
    bad = subprocess.run([AWS, "glacier", "initiate-job", "--account-id", "-", "--vault-name",
                          VAULT, "--job-parameters", json.dumps({**params, "SelectParameters":
                                                                 _sel("SELECT COUNT(*) FROM archive")}),
                          "--endpoint-url", sim.url], env=sim.env(), capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "InvalidParameterValueException" in bad.stderr


def test_without_s3_endpoint_select_is_refused(tmp_path):
    with SimProcess(tmp_path / "data", log_path=tmp_path / "sim.log") as bare:
        client = bare.client(max_attempts=1)
        client.create_vault(vaultName=VAULT)
        archive = upload(client, VAULT, b"a,b\n")
        with pytest.raises(ClientError) as exc:
            client.initiate_job(vaultName=VAULT, jobParameters=_params(archive))
        assert code(exc) == ("InvalidParameterValueException", 400)
        assert "--s3-endpoint" in str(exc.value)


def test_local_s3_on_a_busy_port_fails_at_once(tmp_path):
    """--local-s3 on a port another program holds: one line and exit 2, not an emulator that
    hangs for ever without serving Glacier (moto's server thread dies, its start() waits)."""
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "glacierfs.cli", "sim", "--port", "0",
                               "--data-dir", str(tmp_path / "data"), "--local-s3", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert f"cannot start the local S3 on port {port}: " in proc.stderr
    assert f"port {port} is in use" in proc.stderr
    assert "Traceback" not in proc.stderr
