"""``python -m dlq_inspector ...``: the same commands as ``encodeq dlq ...`` (cli.py)."""

from dlq_inspector.cli import app

if __name__ == "__main__":
    app()
