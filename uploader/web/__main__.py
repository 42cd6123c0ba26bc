"""``python -m uploader.web --host 0.0.0.0 --port 8000``: ``encodeq serve`` (main.py)."""

from uploader.web.main import app

if __name__ == "__main__":
    app()
