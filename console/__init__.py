"""The top floor: the ``encodeq`` command, the demo, ``watch`` and the terminal views. It may import
every service; nothing imports it."""
