"""Voucherify's API: the HTTP client, the mirror that heals what webhooks miss (the CLI's
``sync``), its saved state and sweep, and the list semantics the read API follows.
"""
