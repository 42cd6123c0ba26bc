"""What tests and benches need to drive the real system, one module per concept.

- ``support.stack``: an isolated stack (a RabbitMQ vhost and an embedded S3 server of a run's own)
- ``support.broker``: broker admin (vhosts, ``rabbitmqctl``), connections, queue depths
- ``support.fleet``: the worker fleet (worker processes as compose runs them), process control
- ``support.media``: the synthetic-media recipe (ffmpeg lavfi sources), ffprobe readers
- ``support.storage``: settings, storage and the job store as the run sees them
- ``support.commands``: the ``encodeq`` command and the service entry points compose runs
- ``support.http``: the HTTP service as a subprocess, and requests to it
- ``support.dlq``: dead letters made on purpose and looked at without consuming
- ``support.waiting``: waiting on a condition with a deadline
"""
