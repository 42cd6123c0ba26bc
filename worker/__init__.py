"""The worker service: ``python -m worker`` (main.py) runs the Celery app (app.py).

A job: probe_task.py -> its mode's plan, fan-out and fan-in (modes/: per_rung.py, chunked/) ->
finalize.py. Around the tasks: failure_handling.py (records, dead letters), the bootsteps
(topology_step.py, housekeeping.py, janitor.py), and the tools the tasks use (probe.py, encoder.py,
hls.py, process.py, segment_upload.py, host_cache.py, scratch.py, outbox.py).
"""
