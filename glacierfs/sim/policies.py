"""Vault access policies: Set/Get/DeleteVaultAccessPolicy as documented (one policy per vault,
a JSON document of up to 20 KB; Get answers 404 when none is set). The emulator has no
principals to check them against, so a policy is kept and returned, never enforced."""

from __future__ import annotations

import json
from typing import Any

from glacierfs.sim.errors import invalid, missing, not_found
from glacierfs.sim.messages import Request, Response, empty, json_response

MAX_POLICY = 20 * 1024


def set_access_policy(sim: Any, req: Request, account: str, vault: str) -> Response:
    row = sim.vault(vault)
    body = req.json()
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object")
    policy = body.get("Policy")
    if policy is None:
        raise missing("Required parameter Policy is missing")
    if not isinstance(policy, str) or len(policy.encode()) > MAX_POLICY:
        raise invalid(f"Policy must be a JSON document of at most {MAX_POLICY} bytes")
    try:
        document = json.loads(policy)
    except ValueError:
        raise invalid("Policy is not valid JSON") from None
    if not isinstance(document, dict) or "Statement" not in document:
        raise invalid("Policy must be a policy document (a JSON object with a Statement)")
    sim.store.run("INSERT OR REPLACE INTO vault_policies (vault_id, policy) VALUES (?, ?)",
                  (row["id"], policy))
    return empty(204)


def get_access_policy(sim: Any, req: Request, account: str, vault: str) -> Response:
    row = sim.vault(vault)
    found = sim.store.one("SELECT policy FROM vault_policies WHERE vault_id = ?", (row["id"],))
    if found is None:
        raise not_found(f"No vault access policy is set for: {sim.config.vault_arn(vault)}")
    return json_response(200, {"Policy": found["policy"]})


def delete_access_policy(sim: Any, req: Request, account: str, vault: str) -> Response:
    row = sim.vault(vault)
    sim.store.run("DELETE FROM vault_policies WHERE vault_id = ?", (row["id"],))
    return empty(204)
