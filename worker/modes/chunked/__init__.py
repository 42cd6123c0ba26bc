"""Chunked mode: cut the source into chunks, encode every rung of a chunk from one decode, on
competing workers, then join each rung and check its seams.

The probe task asks ``strategy`` for the plan (chunk_plan.py, from the source's packets), records
it, then calls its fan-out: encode_audio (once for the whole source) and one encode_chunk per chunk
(chunk_tasks.py), each published as soon as split.py has cut its chunk -> join (join_task.py, one
per rung, once every chunk and the audio exist; joining.py concatenates, seams.py checks) ->
finalize (worker/finalize.py). watch_chunks (stragglers.py) offers stragglers to a second worker.

Intermediate objects live under ``uploads/<job>/chunks/`` (sources, per-rung outputs, audio) and go
when the job completes (worker/intermediates.py); a failed job keeps them, so a replayed message
finds what it needs. Every task on a host keeps what it made in the host cache, so a later task
there skips the download.
"""
