"""The DLQ inspector: list, explain, replay, purge, export and import dead-lettered messages.

``operations.py`` is the library the ``encodeq dlq`` commands (``cli.py``, also ``python -m
dlq_inspector``) and the dashboard's DLQ panel both call; each mechanism under it has its own
module (peek: browse.py, the one-pass mover: stream.py, the replay rule: replay.py, ...).
"""
