"""The DLQ inspector: list, explain, replay and purge dead-lettered messages."""
