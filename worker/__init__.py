"""The worker service: the Celery app, its tasks, and the ffmpeg wrapper they use."""
