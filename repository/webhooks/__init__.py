"""Webhook deliveries: ingesting one (claim, apply, record) and the event log it leaves."""
