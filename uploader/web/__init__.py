"""``encodeq serve``: the uploader's HTTP API and live dashboard (static files in ``static/``)."""
