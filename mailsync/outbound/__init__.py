"""Outbound mail: spool → queue → SMTP, with routing, composition and retries."""
