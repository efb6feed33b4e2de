"""The fleet-management services on one DM server: the Python API that the REST layer and the web
console both call.

    fleet = Fleet(server)
    admin = fleet.auth.login("alice", "...")    # or fleet.auth.authenticate(token)
    fleet.registry.create(admin, "IMEI:...")    # every call takes the acting Principal
    fleet.campaigns.create(admin, CampaignSpec(...)); fleet.campaigns.start(admin, 1)
    runner = fleet.run()                        # the campaign scheduler, every second

One service per concern: `auth` (users, tokens, roles, audit), `registry` (devices and their DM
accounts, groups, tags, CSV), `capabilities` (per make/model/version), `releases` (package
lifecycle), `commands` (DM commands), `campaigns` (rollouts) and `reports`. Each checks the actor's
permission and writes the audit log itself."""

from __future__ import annotations

from argon2 import PasswordHasher

from fotadelta.server.auth import Auth
from fotadelta.server.campaigns import Campaigns, Runner
from fotadelta.server.commands import Commands
from fotadelta.server.engine import DmServer
from fotadelta.server.kinds import Capabilities
from fotadelta.server.registry import Registry
from fotadelta.server.releases import Releases
from fotadelta.server.reports import Reports
from fotadelta.server.webhooks import Webhooks


class Fleet:
    """Every fleet service of one DmServer."""

    def __init__(self, server: DmServer, *, webhooks: Webhooks | None = None, max_in_flight: int = 1000,
                 password_hasher: PasswordHasher | None = None) -> None:
        self.server = server
        self.webhooks = webhooks or Webhooks()
        self.auth = Auth(server.store, server.config.admin_token, password_hasher, refusals=server.refusals,
                         workers=server.config.workers)
        self.registry = Registry(server, self.auth)
        self.releases = Releases(server, self.auth)
        self.commands = Commands(server, self.auth, self.webhooks)
        self.campaigns = Campaigns(server, self.auth, self.registry, self.webhooks, max_in_flight=max_in_flight)
        self.reports = Reports(server, self.auth)
        self.capabilities = Capabilities(server, self.auth)
        self._runner: Runner | None = None

    def run(self, interval: float = 1.0) -> Runner:
        """Start the scheduler: campaign ticks, the expiry of unanswered commands and the sweep of idle
        sessions (one scheduler per database: `serve --workers N` runs it in the supervising process)."""
        if self._runner is None:
            self._runner = Runner(self.campaigns, interval, extra=[self.commands.expire, self.server.sweep]).start()
        return self._runner

    def close(self) -> None:
        if self._runner is not None:
            self._runner.stop()
            self._runner = None
        self.webhooks.close()
