"""What an ``auth: {oauth2: ...}`` block of the configuration says, as a frozen value.

The config model holds one :class:`OAuth2` per server (or account's own login) that
authenticates with OAuth2 instead of a password; presets have already filled
``token_url`` and ``scope`` by then. Secrets stay references (resolved when used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from mailsync.values import valueclass

if TYPE_CHECKING:  # the config package imports this module: no import back at run time
    from mailsync.config.secrets import Secret

Provider = Literal["microsoft", "google", "generic"]
# client_credentials: app-only (Microsoft SMTP.SendAsApp, IMAP.AccessAsApp, POP.AccessAsApp);
# refresh_token: a signed-in user (delegated), first obtained by `mailsync auth login`;
# service_account: Google domain-wide delegation (JWT bearer, RFC 7523) as ``subject``.
Grant = Literal["client_credentials", "refresh_token", "service_account"]


@valueclass
class OAuth2:
    """One OAuth2 identity: who asks (client), for whom (grant, subject), for what (scope)."""

    provider: Provider
    grant: Grant
    token_url: str
    scope: str
    client_id: str | None = None
    client_secret: Secret | None = None
    refresh_token: Secret | None = None          # the first one; rotations go to state_dir
    service_account_key: Secret | None = None    # Google's JSON key file
    subject: str | None = None                   # the user a service account acts as
    tenant: str | None = None                    # Microsoft
    device_url: str | None = None                # RFC 8628 device authorization endpoint

    def identity(self) -> tuple[str, ...]:
        """What makes two blocks the same identity, so that they share one cached token."""
        return (self.grant, self.token_url, self.scope, self.client_id or "",
                self.subject or "", self.client_secret.describe() if self.client_secret
                else "", self.refresh_token.describe() if self.refresh_token else "",
                self.service_account_key.describe() if self.service_account_key else "")
