"""The control endpoint under ``/_sim/``: what tests use to steer the emulator while it runs.

Paths under ``/_sim/`` can never be Glacier paths (those start with an account id), so both
share one server and one port.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from glacierfs.sim import ids
from glacierfs.sim.bodies import Body
from glacierfs.sim.clock import iso
from glacierfs.sim.config import DELAY_KEYS
from glacierfs.sim.context import Sim, check_description
from glacierfs.sim.errors import GlacierError, invalid, not_found
from glacierfs.sim.faults import rule_from_json
from glacierfs.sim.messages import Request, Response, json_response
from glacierfs.sim.store import archive_key

log = logging.getLogger(__name__)

# Rows per executemany batch when synthesizing: bounds memory for a million archives.
SYNTH_BATCH = 50_000


def _object(req: Request, required: bool = True) -> dict:
    data = req.json(required=required)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise invalid("Expected a JSON object")
    return data


def stats(sim: Sim, req: Request) -> Response:
    return json_response(200, {**sim.stats.snapshot(), "notifications": sim.notifier.stats()})


def stats_reset(sim: Sim, req: Request) -> Response:
    sim.stats.reset()
    return json_response(200, sim.stats.snapshot())


def faults_get(sim: Sim, req: Request) -> Response:
    return json_response(200, sim.faults.rules())


def faults_put(sim: Sim, req: Request) -> Response:
    data = req.json()
    if not isinstance(data, list):
        raise invalid("Expected a JSON list of fault rules")
    sim.faults.replace([rule_from_json(r) for r in data])
    return json_response(200, sim.faults.rules())


def faults_post(sim: Sim, req: Request) -> Response:
    sim.faults.append(rule_from_json(req.json()))
    return json_response(200, sim.faults.rules())


def faults_delete(sim: Sim, req: Request) -> Response:
    sim.faults.clear()
    return json_response(200, [])


def delays_get(sim: Sim, req: Request) -> Response:
    return json_response(200, sim.config.delays_snapshot())


def delays_put(sim: Sim, req: Request) -> Response:
    data = _object(req)
    values = {}
    for key, value in data.items():
        if key not in DELAY_KEYS:
            raise invalid(f"Unknown delay {key!r}; known: {', '.join(DELAY_KEYS)}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise invalid(f"Delay for {key} must be a number of seconds >= 0")
        values[key] = float(value)
    sim.config.set_delays(values)
    return json_response(200, sim.config.delays_snapshot())


def _vault_id(sim: Sim, name: object) -> int | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise invalid("vault must be a string")
    return sim.vault(name)["id"]


def jobs_complete(sim: Sim, req: Request) -> Response:
    data = _object(req, required=False)
    job_id = data.get("job_id")
    if job_id is not None and sim.jobs.get_by_id(job_id) is None:
        raise not_found(f"The job ID was not found: {job_id}")
    done = sim.jobs.force_complete(job_id, _vault_id(sim, data.get("vault")))
    return json_response(200, {"completed": done})


def jobs_fail(sim: Sim, req: Request) -> Response:
    data = _object(req)
    job_id = data.get("job_id")
    if not isinstance(job_id, str):
        raise invalid("job_id is required")
    message = data.get("message") or "The job failed."
    sim.jobs.force_fail(job_id, str(message))
    return json_response(200, {"failed": job_id})


def jobs_expire(sim: Sim, req: Request) -> Response:
    data = _object(req)
    job_id = data.get("job_id")
    if not isinstance(job_id, str):
        raise invalid("job_id is required")
    sim.jobs.force_expire(job_id)
    return json_response(200, {"expired": job_id})


def clock_get(sim: Sim, req: Request) -> Response:
    return json_response(200, {"now": iso(sim.clock.now()), "offset": sim.clock.offset})


def clock_post(sim: Sim, req: Request) -> Response:
    data = _object(req)
    advance = data.get("advance", 0)
    if not isinstance(advance, (int, float)) or isinstance(advance, bool) or advance < 0:
        raise invalid("advance must be a number of seconds >= 0")
    sim.clock.advance(float(advance))
    return clock_get(sim, req)


def synthesize(sim: Sim, req: Request) -> Response:
    """Create archive records without uploads (zero-byte bodies generated when read)."""
    data = _object(req)
    vault = sim.vault(str(data.get("vault")))
    count, size = data.get("count", 1), data.get("size", 0)
    if not isinstance(count, int) or count < 0 or not isinstance(size, int) or size < 0:
        raise invalid("count and size must be integers >= 0")
    template = data.get("description", "file{i}")
    if not isinstance(template, str):
        raise invalid("description must be a string template")
    check_description(template.replace("{i}", "0"))
    tree_hash = Body(path=None, size=size, file_size=size).range_tree_hash(0, size - 1)
    now = sim.clock.now()
    created = 0
    with sim.store.transaction() as db:
        while created < count:
            n = min(SYNTH_BATCH, count - created)
            names = ids.archive_ids(n)
            db.executemany(
                "INSERT INTO archives (vault_id, archive_key, archive_id, description, size,"
                " tree_hash, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                ((vault["id"], archive_key(names[k]), names[k],
                  template.replace("{i}", str(created + k)), size, tree_hash, now)
                 for k in range(n)))
            created += n
        db.execute("UPDATE vaults SET live_count = live_count + ?, live_size = live_size + ? "
                   "WHERE id = ?", (count, count * size, vault["id"]))
        db.execute("INSERT INTO changes (vault_id, at) VALUES (?, ?)", (vault["id"], now))
    log.info("synthesized %d archives of %d bytes in %s", count, size, vault["name"])
    return json_response(200, {"vault": vault["name"], "count": count, "size": size,
                               "SHA256TreeHash": tree_hash})


Handler = Callable[[Sim, Request], Response]
ROUTES: dict[tuple[str, str], Handler] = {
    ("GET", "/_sim/stats"): stats,
    ("POST", "/_sim/stats/reset"): stats_reset,
    ("GET", "/_sim/faults"): faults_get,
    ("PUT", "/_sim/faults"): faults_put,
    ("POST", "/_sim/faults"): faults_post,
    ("DELETE", "/_sim/faults"): faults_delete,
    ("GET", "/_sim/delays"): delays_get,
    ("PUT", "/_sim/delays"): delays_put,
    ("POST", "/_sim/jobs/complete"): jobs_complete,
    ("POST", "/_sim/jobs/fail"): jobs_fail,
    ("POST", "/_sim/jobs/expire"): jobs_expire,
    ("GET", "/_sim/clock"): clock_get,
    ("POST", "/_sim/clock"): clock_post,
    ("POST", "/_sim/synthesize"): synthesize,
}


def handle(sim: Sim, req: Request) -> Response:
    handler = ROUTES.get((req.method, req.path.rstrip("/")))
    if handler is None:
        raise GlacierError(404, "ResourceNotFoundException",
                           f"No control operation {req.method} {req.path}")
    return handler(sim, req)
