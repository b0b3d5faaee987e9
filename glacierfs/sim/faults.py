"""Fault injection: rules that make chosen operations fail the way Glacier fails.

A rule names an operation (Glacier API name or ``*``), a fault, a probability and a maximum number
of firings. All random draws come from one ``random.Random(seed)``, so a run with the same seed and
the same request sequence injects the same faults. Rules can be replaced while the emulator runs
(``/_sim/faults``).
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass

from glacierfs.sim.errors import GlacierError, invalid

# Faults that answer with an error before the operation runs.
ERROR_FAULTS = {
    "throttle": (400, "ThrottlingException", "Rate exceeded"),
    "error500": (500, "ServiceUnavailableException",
                 "Service is temporarily unavailable. Please try again later."),
    "error503": (503, "ServiceUnavailableException",
                 "Service is temporarily unavailable. Please try again later."),
    "insufficient_capacity": (503, "InsufficientCapacityException",
                              "There is insufficient capacity to process this expedited request."),
    "policy": (400, "PolicyEnforcedException",
               "InitiateJob request denied by current data retrieval policy."),
}
FAULTS = (*ERROR_FAULTS, "drop", "corrupt", "slow", "job_failed", "expire")
# Without an explicit delay, a ``slow`` answer waits this long: long enough to trip a short
# client timeout in a test, short enough not to stall a suite.
DEFAULT_SLOW_DELAY = 1.0


@dataclass
class FaultRule:
    operation: str
    fault: str
    probability: float = 1.0
    count: int | None = None
    delay: float = DEFAULT_SLOW_DELAY
    vault: str | None = None
    fired: int = 0

    def to_json(self) -> dict:
        out = asdict(self)
        out["remaining"] = None if self.count is None else max(0, self.count - self.fired)
        return out


def rule_from_json(data: object) -> FaultRule:
    """Validate one rule given over the control endpoint."""
    if not isinstance(data, dict):
        raise invalid("a fault rule must be a JSON object")
    unknown = set(data) - {"operation", "fault", "probability", "count", "delay", "vault",
                           "fired", "remaining"}
    if unknown:
        raise invalid(f"unknown fault rule fields: {sorted(unknown)}")
    fault = data.get("fault")
    if fault not in FAULTS:
        raise invalid(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    operation = data.get("operation", "*")
    if not isinstance(operation, str) or not operation:
        raise invalid("operation must be a Glacier operation name or '*'")
    try:
        probability = float(data.get("probability", 1.0))
        count = data.get("count")
        count = None if count is None else int(count)
        delay = float(data.get("delay", DEFAULT_SLOW_DELAY))
    except (TypeError, ValueError) as exc:
        raise invalid(f"bad number in fault rule: {exc}") from None
    if not 0.0 <= probability <= 1.0:
        raise invalid("probability must be between 0 and 1")
    if count is not None and count < 0:
        raise invalid("count must be >= 0 or null")
    if delay < 0:
        raise invalid("delay must be >= 0")
    vault = data.get("vault")
    if vault is not None and not isinstance(vault, str):
        raise invalid("vault must be a string")
    return FaultRule(operation=operation, fault=fault, probability=probability, count=count,
                     delay=delay, vault=vault)


def parse_spec(spec: str) -> FaultRule:
    """``OPERATION:FAULT[:PROBABILITY[:COUNT[:DELAY]]]`` (the ``--fault`` flag)."""
    parts = spec.split(":")
    if len(parts) < 2 or len(parts) > 5:
        raise ValueError(f"bad fault spec {spec!r}: want OPERATION:FAULT[:PROBABILITY[:COUNT]]")
    data: dict[str, object] = {"operation": parts[0], "fault": parts[1]}
    if len(parts) > 2 and parts[2]:
        data["probability"] = parts[2]
    if len(parts) > 3 and parts[3] and parts[3].lower() not in ("none", "inf"):
        data["count"] = parts[3]
    if len(parts) > 4 and parts[4]:
        data["delay"] = parts[4]
    try:
        return rule_from_json(data)
    except GlacierError as exc:
        raise ValueError(f"bad fault spec {spec!r}: {exc.message}") from None


class FaultInjector:
    """The active rules and the seeded random source that decides when they fire."""

    def __init__(self, seed: int | None = None, rules: list[FaultRule] | None = None) -> None:
        self._random = random.Random(seed)
        self._rules: list[FaultRule] = list(rules or [])
        self._lock = threading.Lock()

    def rules(self) -> list[dict]:
        with self._lock:
            return [r.to_json() for r in self._rules]

    def replace(self, rules: list[FaultRule]) -> None:
        with self._lock:
            self._rules = list(rules)

    def append(self, rule: FaultRule) -> None:
        with self._lock:
            self._rules.append(rule)

    def clear(self) -> None:
        self.replace([])

    def draw(self, operation: str, vault: str | None, candidates: set[str] | tuple[str, ...]
             ) -> FaultRule | None:
        """The first rule for one of ``candidates`` that fires for this request, if any."""
        with self._lock:
            for rule in self._rules:
                if rule.fault not in candidates:
                    continue
                if rule.operation not in ("*", operation):
                    continue
                if rule.vault is not None and rule.vault != vault:
                    continue
                if rule.count is not None and rule.fired >= rule.count:
                    continue
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue
                rule.fired += 1
                return rule
        return None

    def sample_positions(self, length: int, how_many: int) -> list[int]:
        """Byte offsets to corrupt, from the seeded source."""
        with self._lock:
            return sorted(self._random.sample(range(length), min(how_many, length)))


def error_for(rule: FaultRule) -> GlacierError:
    status, code, message = ERROR_FAULTS[rule.fault]
    return GlacierError(status, code, message)
