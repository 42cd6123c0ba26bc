"""``encodeq demo``: the whole pipeline on this machine, started and stopped by one command.

A new user has RabbitMQ and ffmpeg and nothing else. The demo supplies the rest for the length of
the run (``stack.py``: an embedded S3 server when none answers, two ``encodeq worker`` processes;
``samples.py``: a sample video and a broken file), drives them through the same code paths a user
does (``tour.py``: ``submit``, ``follow``), then explains the outcome (``report.py``: where the
renditions are; ``dead_letters.py``: what the dead-letter queue holds and why). Everything it starts
is stopped again, on success, on errors and on Ctrl-C.
"""
