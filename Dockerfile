# The encodeq image: the worker by default; compose also runs Flower, minio-setup and the
# uploader (python -m uploader.web) from it.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ffmpeg and ffprobe from Debian (bookworm: ffmpeg 5.1 with libx264, as on the dev machines).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . /app
RUN pip install ".[compose]"

# Never run ffmpeg on untrusted input as root.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/encodeq encodeq \
    && install -d -o encodeq -g encodeq /var/lib/encodeq
USER encodeq
ENV ENCODEQ_WORK_DIR=/var/lib/encodeq

# The worker (worker/__main__.py), as compose's worker service runs it.
CMD ["python", "-m", "worker", "--concurrency", "2", "--loglevel", "INFO"]
