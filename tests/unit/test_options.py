"""Mount option parsing: what a mount line means, and the one-line refusals."""

from pathlib import Path

import pytest

from glacierfs.options import OptionError, parse_options, parse_size, parse_source


def test_region_and_account_sources():
    assert parse_source("us-east-1") == (None, "us-east-1")
    assert parse_source("123456789012@eu-west-2") == ("123456789012", "eu-west-2")
    with pytest.raises(OptionError, match="region"):
        parse_source("/dev/sda1")
    with pytest.raises(OptionError, match="12 digits"):
        parse_source("12@us-east-1")


def test_full_option_line():
    o = parse_options("123456789012@us-west-2", [
        "endpoint_url=http://127.0.0.1:9000,profile=backup,vaults=a:b,cache_dir=/tmp/gc,"
        "cache_size=50G,tier=bulk,retrieve=manual,wait=30,poll=2m,max_jobs=5,budget=100G,"
        "inventory_refresh=off,allow_other,uid=1000,gid=100,umask=027,debug,chunk_size=8M"])
    assert o.account_id == "123456789012" and o.region == "us-west-2"
    assert o.endpoint_url == "http://127.0.0.1:9000" and o.profile == "backup"
    assert o.vaults == ("a", "b")
    assert o.cache_dir == Path("/tmp/gc")
    assert o.state_dir == Path("/tmp/gc/123456789012@us-west-2@127.0.0.1_9000")
    assert o.cache_size == 50 * 1024 ** 3
    assert o.tier == "Bulk" and o.retrieve == "manual"
    assert o.wait == 30 and o.poll == 120
    assert o.max_jobs == 5 and o.budget == 100 * 1024 ** 3
    assert o.inventory_refresh == 0
    assert o.allow_other and o.debug
    assert (o.uid, o.gid, o.umask) == (1000, 100, 0o027)
    assert o.chunk_size == 8 * 1024 * 1024


def test_generic_mount_options_are_tolerated():
    o = parse_options("us-east-1", ["dev,suid,nodev,nosuid,rw,_netdev,nofail,noauto,"
                                    "x-systemd.automount,x-systemd.idle-timeout=60,noatime"])
    assert o.tier == "Standard" and not o.read_only
    assert parse_options("us-east-1", ["ro"]).read_only


@pytest.mark.parametrize("line,message", [
    ("tier=Glacial", "tier=Glacial"),
    ("retrieve=sometimes", "auto or manual"),
    ("cache_size=lots", "cache_size=lots"),
    ("chunk_size=3M", "power-of-two"),
    ("cache_size=8M,chunk_size=16M", "smaller than one chunk"),
    ("cache_size=1M", "smaller than one chunk"),
    ("wait=soon", "wait=soon"),
    ("max_jobs=-1", "at least 0"),
    ("max_jobs=many", "whole number"),
    ("frobnicate=1", "unknown option 'frobnicate'"),
    ("endpoint_url", "endpoint_url needs a value"),
])
def test_bad_values_are_refused_with_the_option_named(line, message):
    with pytest.raises(OptionError) as err:
        parse_options("us-east-1", [line])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_sizes():
    assert parse_size("500M", "x") == 500 * 1024 ** 2
    assert parse_size("1.5G", "x") == int(1.5 * 1024 ** 3)
    assert parse_size("2TiB", "x") == 2 * 1024 ** 4
    assert parse_size("4096", "x") == 4096


def test_state_is_kept_apart_per_endpoint():
    aws = parse_options("us-east-1", [])
    emu = parse_options("us-east-1", ["endpoint_url=http://127.0.0.1:7380"])
    other = parse_options("us-east-1", ["endpoint_url=http://127.0.0.1:7381"])
    assert len({aws.state_dir, emu.state_dir, other.state_dir}) == 3
    assert aws.state_dir.name == "-@us-east-1"
    assert "/" not in emu.state_dir.name


def test_poll_default_is_short_only_for_a_local_endpoint():
    assert parse_options("us-east-1", []).poll_interval is None
    assert parse_options("us-east-1", ["endpoint_url=https://glacier.example.com"]).poll_interval is None
    assert parse_options("us-east-1", ["endpoint_url=http://localhost:9"]).poll_interval == 2.0
    assert parse_options("us-east-1", ["endpoint_url=http://127.0.0.1:9,poll=30"]).poll_interval == 30
