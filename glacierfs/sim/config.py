"""Settings of one emulator run (from the command line; delays also from ``PUT /_sim/delays``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

TIERS = ("Expedited", "Standard", "Bulk")
INVENTORY = "inventory"
DELAY_KEYS = (*TIERS, INVENTORY)

# Short enough that a test waiting for a job costs seconds, ordered like the real tiers so code
# that picks a tier by latency sees the same ranking.
TEST_DELAYS = {"Expedited": 1.0, "Standard": 3.0, "Bulk": 6.0, INVENTORY: 2.0}
# What AWS documents: Expedited 1-5 min, Standard 3-5 h, Bulk 5-12 h, inventory about 4 h.
REALISTIC_DELAYS = {"Expedited": 180.0, "Standard": 4 * 3600.0, "Bulk": 8 * 3600.0,
                    INVENTORY: 4 * 3600.0}
PRESETS = {"test": TEST_DELAYS, "realistic": REALISTIC_DELAYS}
# Glacier keeps job output at least 24 hours after completion.
DEFAULT_JOB_TTL = 86400.0
DEFAULT_ACCOUNT_ID = "123456789012"
DEFAULT_REGION = "us-east-1"


@dataclass
class SimConfig:
    region: str = DEFAULT_REGION
    account_id: str = DEFAULT_ACCOUNT_ID
    job_ttl: float = DEFAULT_JOB_TTL
    inventory_mode: str = "live"  # or "daily"
    access_key_id: str | None = None
    delays: dict[str, float] = field(default_factory=lambda: dict(TEST_DELAYS))
    bandwidth: float | None = None        # bytes/s per connection for job-output bodies
    bandwidth_total: float | None = None  # bytes/s for all job-output bodies together
    tree_hash_header: bool = True         # False: GetJobOutput never sends x-amz-sha256-tree-hash
    honour_range: bool = True             # False: a ranged GetJobOutput gets the whole body (200)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def vault_arn(self, name: str) -> str:
        return f"arn:aws:glacier:{self.region}:{self.account_id}:vaults/{name}"

    def delay(self, key: str) -> float:
        with self._lock:
            return self.delays.get(key, self.delays["Standard"])

    def set_delays(self, values: dict[str, float]) -> None:
        with self._lock:
            self.delays.update(values)

    def delays_snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self.delays)
