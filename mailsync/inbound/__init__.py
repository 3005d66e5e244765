"""Inbound mail: IMAP, POP3 and local Maildir sources, fetch state, bounces."""
