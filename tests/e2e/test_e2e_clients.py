"""Real clients against a real mount: an uncached read is an error to every runtime.

A read of an archive whose retrieval is requested or running fails with EREMOTE ("Object is
remote"). EAGAIN would be read as "no data yet on a non-blocking descriptor" by Python's io
(``read()`` returns None, ``shutil.copy`` writes an empty file); this matrix runs the copy
tools and runtimes people move data with and asserts that each one fails loudly (non-zero exit
or an exception naming the error) and leaves no complete-looking copy (the destination is
missing or shorter than the source; GNU tar pads a member it cannot read and exits 2, so for
tar the exit status is what counts). The positive control: once a file is cached, every client
copies it byte-exact. A runtime that is not installed skips with the reason.

One emulator (retrievals take an hour, so the ``pending`` vault is never cached during the
module; the ``ready`` vault's jobs are completed through the emulator's control endpoint) and
one mount for the whole module; compiled helpers (C, Java, Go) are built once.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_util import (NOT_READY_TEXT, TOOL_ENV, getfattr_one, ok, run, start_emulator, wait_for,
                      wait_listed)

pytestmark = pytest.mark.e2e

PENDING, READY = "pending", "ready"
TREE = "tree"
NAME = "data.bin"
DATA = random.Random(20261201).randbytes(300 * 1024 + 17)  # several reads of every client
JOB_DELAY = 3600.0  # seconds: no retrieval of the pending vault finishes during the module
COMPILE_TIMEOUT = 180.0
CLIENT_TIMEOUT = 120.0
EAGAIN_TEXT = "Resource temporarily unavailable"
NODE_EREMOTE = f"Unknown system error -{errno.EREMOTE}"

C_SOURCE = r"""
#include <stdio.h>
int main(int argc, char **argv) {
    FILE *in = fopen(argv[1], "rb"), *out;
    char buf[65536];
    size_t n;
    if (!in) { perror(argv[1]); return 1; }
    if (!(out = fopen(argv[2], "wb"))) { perror(argv[2]); return 1; }
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) { perror(argv[2]); return 1; }
    if (ferror(in)) { perror(argv[1]); return 1; }
    if (fclose(out) != 0) { perror(argv[2]); return 1; }
    return 0;
}
"""
JAVA_SOURCE = """
import java.nio.file.Files;
import java.nio.file.Path;

public class Copy {
    public static void main(String[] args) throws Exception {
        Files.copy(Path.of(args[0]), Path.of(args[1]));
    }
}
"""
GO_SOURCE = """
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	in, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := os.Create(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if _, err := io.Copy(out, in); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := out.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
"""
NODE_READ = ("const fs = require('fs');"
             "fs.writeFileSync(process.argv[2], fs.readFileSync(process.argv[1]));")
NODE_COPY = "require('fs').copyFileSync(process.argv[1], process.argv[2]);"


@dataclass
class Outcome:
    rc: int      # 0: the client reported success
    err: str     # what it said (stderr, or the exception)


class Toolbox:
    """Builds the compiled clients once, on first use; skips when a runtime is missing."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.built: dict[str, list[str]] = {}

    def need(self, *programs: str) -> None:
        missing = [p for p in programs if shutil.which(p) is None]
        if missing:
            pytest.skip(f"not installed here: {', '.join(missing)}")

    def _compile(self, *cmd: str | Path, env: dict[str, str] | None = None) -> None:
        proc = subprocess.run([os.fspath(c) for c in cmd], capture_output=True, text=True,
                              timeout=COMPILE_TIMEOUT, env=env or TOOL_ENV)
        assert proc.returncode == 0, f"{cmd[0]} failed: {proc.stderr}"

    def command(self, kind: str) -> list[str]:
        if kind in self.built:
            return self.built[kind]
        d = self.base / kind
        d.mkdir()
        if kind == "c":
            self.need("gcc")
            (d / "copy.c").write_text(C_SOURCE)
            self._compile("gcc", "-O2", "-Wall", "-o", d / "copy", d / "copy.c")
            cmd = [str(d / "copy")]
        elif kind == "java":
            self.need("javac", "java")
            (d / "Copy.java").write_text(JAVA_SOURCE)
            self._compile("javac", "-d", d, d / "Copy.java")
            cmd = ["java", "-Xshare:auto", "-XX:TieredStopAtLevel=1", "-cp", str(d), "Copy"]
        elif kind == "go":
            self.need("go")
            (d / "main.go").write_text(GO_SOURCE)
            env = {**TOOL_ENV, "HOME": str(d), "GOCACHE": str(d / "cache"),
                   "GOPATH": str(d / "gopath"), "GO111MODULE": "off", "GOFLAGS": ""}
            self._compile("go", "build", "-o", d / "gocopy", d / "main.go", env=env)
            cmd = [str(d / "gocopy")]
        else:
            raise ValueError(kind)
        self.built[kind] = cmd
        return cmd


def _tool(*cmd: str | Path) -> Outcome:
    proc = run(*cmd, timeout=CLIENT_TIMEOUT)
    return Outcome(proc.returncode, proc.stderr)


def _python(fn: Callable[[], object]) -> Outcome:
    try:
        fn()
    except OSError as exc:  # shutil.Error is one too
        return Outcome(1, f"{type(exc).__name__}: {exc}")
    return Outcome(0, "")


def _python_read(src: Path, dst: Path) -> None:
    with open(src, "rb") as f:
        data = f.read()
    assert isinstance(data, bytes), f"read() returned {data!r}, not bytes and no error"
    dst.write_bytes(data)


def _node(tb: Toolbox, script: str, src: Path, dst: Path) -> Outcome:
    tb.need("node")
    return _tool("node", "-e", script, src, dst)


def _tar(tb: Toolbox, src: Path, dst: Path) -> Outcome:
    out = _tool("tar", "-cf", dst / "tree.tar", "-C", src.parent, src.name)
    if out.rc == 0:  # the control: the archive unpacks to the very bytes
        ok("tar", "-xf", dst / "tree.tar", "-C", dst)
    return out


@dataclass
class Client:
    tree: bool   # copies the directory (the copy lands in DEST/tree/data.bin), not the file
    copy: Callable[[Toolbox, Path, Path], Outcome]  # (toolbox, source, destination directory)
    pads: bool = False  # writes a full-size member for what it could not read (GNU tar)
    says: str = NOT_READY_TEXT  # what its error message contains


CLIENTS: dict[str, Client] = {
    "python-open-read": Client(False, lambda tb, s, d: _python(lambda: _python_read(s, d / NAME))),
    "python-shutil.copy": Client(False, lambda tb, s, d: _python(lambda: shutil.copy(s, d))),
    "python-shutil.copytree": Client(
        True, lambda tb, s, d: _python(lambda: shutil.copytree(s, d / s.name))),
    "cp": Client(False, lambda tb, s, d: _tool("cp", s, d)),
    "cp-r": Client(True, lambda tb, s, d: _tool("cp", "-r", s, d)),
    "rsync": Client(False, lambda tb, s, d: _tool("rsync", s, d)),
    "rsync-a": Client(True, lambda tb, s, d: _tool("rsync", "-a", s, d)),
    # GNU tar opens every file with O_NONBLOCK (so a FIFO cannot hang it): it gets EAGAIN,
    # reports a read error and exits 2.
    "tar": Client(True, _tar, pads=True, says=EAGAIN_TEXT),
    "dd": Client(False, lambda tb, s, d: _tool("dd", f"if={s}", f"of={d / NAME}", "bs=64k")),
    # libuv has no name for EREMOTE: node says "Unknown system error -66".
    "node-readFileSync": Client(False, lambda tb, s, d: _node(tb, NODE_READ, s, d / NAME),
                                says=NODE_EREMOTE),
    "node-copyFileSync": Client(False, lambda tb, s, d: _node(tb, NODE_COPY, s, d / NAME),
                                says=NODE_EREMOTE),
    "java-Files.copy": Client(False, lambda tb, s, d: _tool(*tb.command("java"), s, d / NAME)),
    "c-stdio-fread": Client(False, lambda tb, s, d: _tool(*tb.command("c"), s, d / NAME)),
    "go-io.Copy": Client(False, lambda tb, s, d: _tool(*tb.command("go"), s, d / NAME)),
}


# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    sim = start_emulator(tmp_path_factory.mktemp("sim"), "--delay", f"Standard={JOB_DELAY}",
                         "--delay", f"Bulk={JOB_DELAY}", "--delay", f"Expedited={JOB_DELAY}",
                         "--delay", "inventory=1")
    try:
        client = sim.client()
        for vault in (PENDING, READY):
            client.create_vault(vaultName=vault)
            client.upload_archive(vaultName=vault, body=DATA, archiveDescription=f"{TREE}/{NAME}")
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def mnt(emulator, module_mounts):
    mount = module_mounts(emulator.url, "clients")
    for vault in (PENDING, READY):
        wait_listed(mount / vault, {TREE})
    return mount


@pytest.fixture(scope="module")
def toolbox(tmp_path_factory) -> Toolbox:
    return Toolbox(tmp_path_factory.mktemp("toolbox"))


@pytest.fixture(scope="module")
def ready(emulator, mnt) -> Path:
    """The ready vault's tree, cached: restored, its job finished at once, downloaded."""
    f = mnt / READY / TREE / NAME
    ok("setfattr", "-n", "user.glacier.restore", "-v", "Standard", f)
    wait_for(lambda: emulator.complete_jobs(vault=READY), 30, "the ready vault's job")
    wait_for(lambda: getfattr_one(f, "user.glacier.cache") == "cached", 60, f"{f} cached")
    return f.parent


def _source(mnt, client: Client, vault: str) -> tuple[Path, Path]:
    """(what the client is given, where its copy of data.bin lands relative to DEST)."""
    tree = mnt / vault / TREE
    return (tree, Path(TREE) / NAME) if client.tree else (tree / NAME, Path(NAME))


# --- the matrix ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CLIENTS)
def test_uncached_read_fails_loudly(name, mnt, toolbox, tmp_path):
    client = CLIENTS[name]
    src, rel = _source(mnt, client, PENDING)
    dst = tmp_path / "dest"
    dst.mkdir()
    out = client.copy(toolbox, src, dst)
    assert out.rc != 0, f"{name} reported success on an uncached file"
    assert client.says.lower() in out.err.lower(), f"{name} did not name the error: {out.err}"
    copy = dst / rel
    if not client.pads:
        assert not copy.exists() or copy.stat().st_size < len(DATA), \
            f"{name} left a complete-looking copy ({copy.stat().st_size} bytes)"
    # The failure was "not ready", not something else: the retrieval is requested, not done.
    f = mnt / PENDING / TREE / NAME
    assert getfattr_one(f, "user.glacier.job.status") == "InProgress"
    assert getfattr_one(f, "user.glacier.cache") == "absent"


@pytest.mark.parametrize("name", CLIENTS)
def test_cached_file_copies_byte_exact(name, ready, mnt, toolbox, tmp_path):
    client = CLIENTS[name]
    src, rel = _source(mnt, client, READY)
    dst = tmp_path / "dest"
    dst.mkdir()
    out = client.copy(toolbox, src, dst)
    assert out.rc == 0, f"{name} failed on a cached file: {out.err}"
    assert (dst / rel).read_bytes() == DATA


def test_python_read_raises_eremote(mnt):
    """The case that used to lose data: buffered read() must raise, not return None."""
    f = mnt / PENDING / TREE / NAME
    with pytest.raises(OSError) as info, open(f, "rb") as fh:
        fh.read()
    assert info.value.errno == errno.EREMOTE
    assert not isinstance(info.value, BlockingIOError)


def test_nonblocking_open_gets_eagain(mnt):
    """A handle opened with O_NONBLOCK asked for "would block" answers: EAGAIN."""
    f = mnt / PENDING / TREE / NAME
    fd = os.open(f, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(BlockingIOError) as info:
            os.read(fd, 4096)
        assert info.value.errno == errno.EAGAIN
    finally:
        os.close(fd)
    fd = os.open(f, os.O_RDONLY)  # the same file, blocking: EREMOTE
    try:
        with pytest.raises(OSError) as info:
            os.read(fd, 4096)
        assert info.value.errno == errno.EREMOTE
    finally:
        os.close(fd)

