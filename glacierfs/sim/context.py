"""Everything one running emulator shares between request threads."""

from __future__ import annotations

from dataclasses import dataclass

from glacierfs.sim.clock import Clock
from glacierfs.sim.config import SimConfig
from glacierfs.sim.errors import access_denied, invalid, not_found
from glacierfs.sim.faults import FaultInjector
from glacierfs.sim.jobs import Jobs
from glacierfs.sim.notifications import Notifier
from glacierfs.sim.select.service import SelectService
from glacierfs.sim.stats import Stats
from glacierfs.sim.store import Row, Store

CLOCK_OFFSET_KEY = "clock_offset"


@dataclass
class Sim:
    store: Store
    config: SimConfig
    clock: Clock
    jobs: Jobs
    faults: FaultInjector
    stats: Stats
    select: SelectService
    notifier: Notifier

    @classmethod
    def open(cls, store: Store, config: SimConfig, seed: int | None = None,
             s3_endpoint: str | None = None, sns_endpoint: str | None = None) -> Sim:
        offset = float(store.get_meta(CLOCK_OFFSET_KEY, "0") or 0)
        clock = Clock(offset, on_change=lambda off: store.set_meta(CLOCK_OFFSET_KEY, repr(off)))
        jobs = Jobs(store, config, clock)
        jobs.select = SelectService(store, config.region, s3_endpoint)
        jobs.notifier = Notifier(store, sns_endpoint)
        return cls(store=store, config=config, clock=clock, jobs=jobs,
                   faults=FaultInjector(seed), stats=Stats(), select=jobs.select,
                   notifier=jobs.notifier)

    def check_account(self, account_id: str) -> None:
        """``-`` means the caller's account; any other id must be ours, as in Glacier."""
        if account_id not in ("-", self.config.account_id):
            raise access_denied(
                f"Access denied for account {account_id}: requests are signed for account "
                f"{self.config.account_id}")

    def vault(self, name: str) -> Row:
        row = self.store.vault(name)
        if row is None:
            raise not_found(f"Vault not found for ARN: {self.config.vault_arn(name)}")
        return row


def check_description(text: str | None, what: str = "archive description") -> str:
    """Glacier accepts up to 1024 printable ASCII characters."""
    if text is None:
        return ""
    if len(text) > 1024 or any(not 32 <= ord(c) <= 126 for c in text):
        raise invalid(f"Invalid {what}: at most 1024 printable ASCII characters")
    return text
