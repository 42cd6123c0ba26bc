"""One module per lesson, each exporting ``SCENARIO``."""
