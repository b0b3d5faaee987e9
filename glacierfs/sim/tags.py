"""Vault tags: AddTagsToVault, RemoveTagsFromVault (both ``POST tags``, told apart by the
``operation`` query parameter) and ListTagsForVault, with the documented limits: up to 50 tags
per vault (LimitExceededException past it), keys of 1 to 128 characters not starting with
``aws:``, values of 0 to 256 characters; adding a key that exists replaces its value. The
``vault_tags`` table is in the store's schema."""

from __future__ import annotations

from typing import Any

from glacierfs.sim.errors import GlacierError, invalid, missing
from glacierfs.sim.messages import Request, Response, empty, json_response

MAX_TAGS = 50
MAX_KEY, MAX_VALUE = 128, 256
# The operation name of ``POST tags`` by its ``operation`` query parameter.
POST_OPERATIONS = {"add": "AddTagsToVault", "remove": "RemoveTagsFromVault"}


def _tags(sim: Any, vault_id: int) -> dict[str, str]:
    return {r["key"]: r["value"] for r in sim.store.all(
        "SELECT key, value FROM vault_tags WHERE vault_id = ? ORDER BY key", (vault_id,))}


def list_tags(sim: Any, req: Request, account: str, vault: str) -> Response:
    return json_response(200, {"Tags": _tags(sim, sim.vault(vault)["id"])})


def post_tags(sim: Any, req: Request, account: str, vault: str) -> Response:
    operation = req.query.get("operation")
    if operation not in POST_OPERATIONS:
        raise invalid(f"Invalid operation: {operation}. Valid values: add, remove")
    row = sim.vault(vault)
    body = req.json()
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object")
    current = _tags(sim, row["id"])
    if operation == "remove":
        keys = body.get("TagKeys")
        if keys is None:
            raise missing("Required parameter TagKeys is missing")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise invalid("TagKeys must be a list of strings")
        with sim.store.transaction() as db:
            db.executemany("DELETE FROM vault_tags WHERE vault_id = ? AND key = ?",
                           [(row["id"], k) for k in keys])
        return empty(204)
    tags = body.get("Tags")
    if tags is None:
        raise missing("Required parameter Tags is missing")
    if not isinstance(tags, dict) or not tags:
        raise invalid("Tags must be a map of one or more keys to values")
    for key, value in tags.items():
        if not 1 <= len(key) <= MAX_KEY or key.lower().startswith("aws:"):
            raise invalid(f"Invalid tag key: {key!r} (1 to {MAX_KEY} characters, not starting "
                          "with aws:)")
        if not isinstance(value, str) or len(value) > MAX_VALUE:
            raise invalid(f"Invalid value for tag {key!r}: a string of at most {MAX_VALUE} "
                          "characters")
    if len(set(current) | set(tags)) > MAX_TAGS:
        raise GlacierError(400, "LimitExceededException",
                           f"A vault can have at most {MAX_TAGS} tags")
    with sim.store.transaction() as db:
        db.executemany("INSERT OR REPLACE INTO vault_tags (vault_id, key, value) "
                       "VALUES (?, ?, ?)", [(row["id"], k, v) for k, v in tags.items()])
    return empty(204)
