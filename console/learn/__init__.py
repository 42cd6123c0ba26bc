"""``encodeq learn``: each message-queue concept as a scenario run against the real broker, judged
from the broker's own counters."""
