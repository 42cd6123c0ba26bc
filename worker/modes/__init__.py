"""The encode modes, each a strategy (strategy.py) for the middle of a job's pipeline.

probe (worker/probe_task.py) -> the mode's plan and fan-out -> its tasks and fan-in ->
finalize (worker/finalize.py). ``per_rung``: one task per rung decodes the whole source.
``chunked``: the source is cut into chunks, every rung of a chunk is encoded from one decode on
competing workers, then each rung is joined. registry.py picks the mode of a job and hands a job
its mode gives up on to per-rung; neither mode imports the other.
"""
