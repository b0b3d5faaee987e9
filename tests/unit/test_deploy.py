"""The files under deploy/ (worker image, Kubernetes Indexed Job, AWS Batch job definition) and
the README's "Migrating at scale" commands parse, agree with each other, and use only flags and
mount options that glacierfs has."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

from glacierfs import options
from glacierfs.commands.copycmd import parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
WORKER = DEPLOY / "worker.sh"


def copy_flags() -> set[str]:
    return {s for a in parser()._actions for s in a.option_strings}


def flags_in(script: str) -> list[str]:
    """Options given to ``glacierfs copy`` in shell commands."""
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        lex.commenters = "#"
        words = list(lex)
        for i, w in enumerate(words):
            if w == "copy" and i and words[i - 1] == "glacierfs":
                for x in words[i + 1:]:
                    if x in ("||", "&&", ";", "|", "&"):
                        break
                    if x.startswith("-"):
                        out.append(x.split("=")[0])
    return out


def expand(text: str, env: dict[str, str]) -> str:
    """${NAME:-default} and $NAME as sh would, from ``env``."""
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1], m[2]), text)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], ""), text)


def k8s_env() -> dict[str, str]:
    job = yaml.safe_load((DEPLOY / "kubernetes-job.yaml").read_text())
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: str(e["value"]) for e in container["env"]}


def batch_env() -> dict[str, str]:
    spec = json.loads((DEPLOY / "batch-job-definition.json").read_text())
    return {e["name"]: e["value"] for e in spec["containerProperties"]["environment"]}


def test_worker_uses_only_existing_copy_flags():
    script = WORKER.read_text()
    used = flags_in(script)
    assert "--shard" in used and "--manifest" in used and "-o" in used
    assert '"glacier://$region/$VAULT"' in script      # no mount
    assert set(used) <= copy_flags(), set(used) - copy_flags()


def test_worker_mount_options_parse_with_each_deployments_settings():
    script = WORKER.read_text()
    assignments = re.findall(r'^\s*(?:\[.*\] && )?(\w+)="([^"]*)"$', script, re.M)
    assert "opts" in dict(assignments)
    for env in (k8s_env(), batch_env()):
        env = dict(env)
        for name, value in assignments:
            env[name] = expand(value, env)
        opts = options.parse_options(env.get("AWS_REGION", "us-east-1"), [env["opts"]])
        assert opts.tier == env["TIER"]
        assert opts.budget == options.parse_size(env["BUDGET"], "budget")
        assert opts.max_jobs == int(env["MAX_JOBS"])


def test_kubernetes_indexed_job_matches_the_worker():
    job = yaml.safe_load((DEPLOY / "kubernetes-job.yaml").read_text())
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    env = k8s_env()
    assert spec["completions"] == int(env["SHARDS"])
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == [installed_worker()]
    assert not container["securityContext"].get("privileged")    # no FUSE: glacier://
    assert env["DEST"].startswith("s3://")
    read = set(re.findall(r"\$\{?(\w+)", WORKER.read_text()))
    assert set(env) <= read, set(env) - read
    assert "JOB_COMPLETION_INDEX" in read


def test_batch_job_definition_matches_the_worker():
    spec = json.loads((DEPLOY / "batch-job-definition.json").read_text())
    props = spec["containerProperties"]
    assert spec["type"] == "container" and not props.get("privileged")
    assert spec["platformCapabilities"] == ["FARGATE"]   # no /dev/fuse there
    assert props["command"] == [installed_worker()]
    env = batch_env()
    read = set(re.findall(r"\$\{?(\w+)", WORKER.read_text()))
    assert set(env) <= read, set(env) - read
    assert "AWS_BATCH_JOB_ARRAY_INDEX" in read


def installed_worker() -> str:
    """Where the Dockerfile puts worker.sh (and runs it by default)."""
    docker = (DEPLOY / "Dockerfile").read_text()
    m = re.search(r"^COPY deploy/worker\.sh (\S+)$", docker, re.M)
    assert m, "the Dockerfile installs deploy/worker.sh"
    assert re.search(rf'^CMD \["{re.escape(m[1])}"\]$', docker, re.M)
    for src in re.findall(r"^COPY (.+) \S+$", docker, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), path
    return m[1]


def test_readme_migration_commands_use_existing_flags():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Migrating at scale", 1)[1].split("\n## ", 1)[0]
    commands = [line for block in re.findall(r"```sh\n(.*?)```", section, re.S)
                for line in block.splitlines() if "glacierfs copy" in line]
    assert any("AWS_BATCH_JOB_ARRAY_INDEX" in c for c in commands)
    assert any("JOB_COMPLETION_INDEX" in c for c in commands)
    for command in commands:
        used = flags_in(command)
        assert set(used) <= copy_flags(), (command, set(used) - copy_flags())
