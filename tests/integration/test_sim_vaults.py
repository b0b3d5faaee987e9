"""Vault operations of the emulator, through boto3 as a user would call them."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from glacierfs.sim.testing import make_client, upload


def code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    err = exc.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


def test_create_describe_and_counts(glacier):
    out = glacier.create_vault(vaultName="photos")
    assert out["location"] == "/123456789012/vaults/photos"
    desc = glacier.describe_vault(vaultName="photos")
    assert desc["VaultARN"] == "arn:aws:glacier:us-east-1:123456789012:vaults/photos"
    assert desc["VaultName"] == "photos"
    assert desc["CreationDate"].endswith("Z")
    assert desc["NumberOfArchives"] == 0 and desc["SizeInBytes"] == 0
    assert desc.get("LastInventoryDate") is None
    upload(glacier, "photos", b"x" * 1000)
    upload(glacier, "photos", b"y" * 24)
    desc = glacier.describe_vault(vaultName="photos")
    assert (desc["NumberOfArchives"], desc["SizeInBytes"]) == (2, 1024)
    assert desc["LastInventoryDate"] >= desc["CreationDate"]


def test_create_is_idempotent_and_validates_names(glacier):
    glacier.create_vault(vaultName="a.b-c_d")
    glacier.create_vault(vaultName="a.b-c_d")
    assert [v["VaultName"] for v in glacier.list_vaults()["VaultList"]] == ["a.b-c_d"]
    with pytest.raises(ClientError) as exc:
        glacier.create_vault(vaultName="bad:name")
    assert code(exc) == ("InvalidParameterValueException", 400)


def test_list_vaults_pages_in_name_order_with_arn_markers(glacier):
    names = [f"v{i:02d}" for i in range(23)]
    for name in reversed(names):
        glacier.create_vault(vaultName=name)
    first = glacier.list_vaults()
    assert len(first["VaultList"]) == 10  # Glacier's default page size
    assert first["Marker"] == "arn:aws:glacier:us-east-1:123456789012:vaults/v10"
    seen, marker = [], None
    while True:
        kwargs = {"limit": "7"}
        if marker:
            kwargs["marker"] = marker
        page = glacier.list_vaults(**kwargs)
        assert len(page["VaultList"]) <= 7
        seen += [v["VaultName"] for v in page["VaultList"]]
        marker = page.get("Marker")
        if not marker:
            break
    assert seen == names
    assert [v["VaultName"] for p in glacier.get_paginator("list_vaults").paginate()
            for v in p["VaultList"]] == names


def test_delete_vault_only_when_empty(glacier, vault):
    archive = upload(glacier, vault, b"data")
    with pytest.raises(ClientError) as exc:
        glacier.delete_vault(vaultName=vault)
    assert code(exc) == ("InvalidParameterValueException", 400)
    glacier.delete_archive(vaultName=vault, archiveId=archive)
    glacier.delete_vault(vaultName=vault)
    with pytest.raises(ClientError) as exc:
        glacier.describe_vault(vaultName=vault)
    assert code(exc) == ("ResourceNotFoundException", 404)
    assert "Vault not found for ARN" in str(exc.value)


def test_account_id_dash_or_own_id_only(glacier):
    glacier.create_vault(accountId="123456789012", vaultName="mine")
    assert glacier.describe_vault(accountId="-", vaultName="mine")["VaultName"] == "mine"
    with pytest.raises(ClientError) as exc:
        glacier.describe_vault(accountId="999999999999", vaultName="mine")
    assert code(exc) == ("AccessDeniedException", 403)


@pytest.mark.sim_args("--access-key-id", "AKIDRIGHT", "--account-id", "111122223333",
                      "--region", "eu-west-1")
def test_access_key_and_account_flags(sim):
    good = make_client(sim.url, max_attempts=1, key_id="AKIDRIGHT")
    good.create_vault(vaultName="v")
    arn = good.describe_vault(vaultName="v")["VaultARN"]
    assert arn == "arn:aws:glacier:eu-west-1:111122223333:vaults/v"
    bad = make_client(sim.url, max_attempts=1, key_id="AKIDWRONG")
    with pytest.raises(ClientError) as exc:
        bad.list_vaults()
    assert code(exc) == ("UnrecognizedClientException", 403)


def test_vault_tags_as_documented(sim, glacier):
    glacier.create_vault(vaultName="tagged")
    assert glacier.list_tags_for_vault(vaultName="tagged")["Tags"] == {}
    glacier.add_tags_to_vault(vaultName="tagged", Tags={"owner": "ann", "empty": ""})
    glacier.add_tags_to_vault(vaultName="tagged", Tags={"owner": "bob"})   # replaces
    assert glacier.list_tags_for_vault(vaultName="tagged")["Tags"] == {"owner": "bob",
                                                                       "empty": ""}
    glacier.remove_tags_from_vault(vaultName="tagged", TagKeys=["empty", "absent"])
    assert glacier.list_tags_for_vault(vaultName="tagged")["Tags"] == {"owner": "bob"}
    requests = sim.stats()["requests"]
    assert (requests["AddTagsToVault"], requests["RemoveTagsFromVault"]) == (2, 1)
    for bad in ({"aws:reserved": "x"}, {"k" * 129: "x"}, {"key": "v" * 257}):
        with pytest.raises(ClientError) as exc:
            glacier.add_tags_to_vault(vaultName="tagged", Tags=bad)
        assert exc.value.response["Error"]["Code"] == "InvalidParameterValueException"
    with pytest.raises(ClientError) as exc:
        glacier.add_tags_to_vault(vaultName="tagged", Tags={f"k{i}": "v" for i in range(50)})
    assert exc.value.response["Error"]["Code"] == "LimitExceededException"
    assert glacier.list_tags_for_vault(vaultName="tagged")["Tags"] == {"owner": "bob"}
    with pytest.raises(ClientError) as exc:
        glacier.list_tags_for_vault(vaultName="nope")
    assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"
    glacier.delete_vault(vaultName="tagged")   # tags go with the vault
    glacier.create_vault(vaultName="tagged")
    assert glacier.list_tags_for_vault(vaultName="tagged")["Tags"] == {}


def test_vault_access_policies_are_kept_and_returned(glacier):
    glacier.create_vault(vaultName="guarded")
    with pytest.raises(ClientError) as exc:
        glacier.get_vault_access_policy(vaultName="guarded")
    assert code(exc) == ("ResourceNotFoundException", 404)
    policy = ('{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":"*",'
              '"Action":"glacier:DeleteArchive","Resource":"*"}]}')
    glacier.set_vault_access_policy(vaultName="guarded", policy={"Policy": policy})
    got = glacier.get_vault_access_policy(vaultName="guarded")["policy"]["Policy"]
    assert got == policy
    for bad in ("not json", "[1]", "x" * 21000):
        with pytest.raises(ClientError) as exc:
            glacier.set_vault_access_policy(vaultName="guarded", policy={"Policy": bad})
        assert code(exc) == ("InvalidParameterValueException", 400)
    glacier.delete_vault_access_policy(vaultName="guarded")
    with pytest.raises(ClientError) as exc:
        glacier.get_vault_access_policy(vaultName="guarded")
    assert code(exc) == ("ResourceNotFoundException", 404)
