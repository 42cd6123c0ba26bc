"""The top floor: the ``encodeq`` command (cli.py), the demo, and the terminal views (watch, upload
--wait) of the live job model in ``core/``. It may import every service; nothing imports it."""
