"""The HTTP service: API and live dashboard (``python -m uploader.web``, ``encodeq serve``).

main.py is the command, server.py runs uvicorn, app.py assembles the app from routes/ (one router
per resource), errors.py, security.py and state.py; the page's files are in ``static/``.
"""
