"""The durable spool and its delivery workers (delivery.mode: spool | fallback)."""
