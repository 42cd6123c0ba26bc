"""Chunked mode: encode every rung of a range of the source's frames from one decode, on
competing workers, then join each rung and check its seams.

The probe task asks ``strategy`` for the plan (chunk_plan.py: how many chunks from the source's
length and the fleet's encode consumers, and which frames each holds, from the source's packets),
records it, then calls its fan-out: the lowest rung's encode from the whole source (published
by name, first in the job's lane: it plays from its first segment, seconds after the upload),
encode_audio (once for the whole source) and the first window of encode_chunk tasks
(chunk_tasks.py: every other rung of a chunk, each decoding its own range of the host-cached
source) -> join (join_task.py, one per chunked rung, once every chunk and the audio exist;
joining.py concatenates, seams.py checks) -> finalize (worker/finalize.py). watch_chunks
(stragglers.py) offers stragglers to a second worker.

Intermediate objects live under ``uploads/<job>/chunks/`` (per-rung outputs, audio) and go when
the job completes (core/intermediates.py); a failed job keeps them, so a replayed message finds
what it needs. Every task on a host keeps what it made in the host cache, so a later task there
skips the download.
"""
