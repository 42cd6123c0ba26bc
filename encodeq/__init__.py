"""The shared core of encodeq: job manifest, storage, events, failure records and the CLI."""
