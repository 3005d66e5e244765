"""OAuth2 for the mail protocols: grants, the token cache and its refresh, SASL XOAUTH2 and
OAUTHBEARER (Microsoft 365 and Google refuse passwords)."""
