"""``encodeq up``: the whole stack on one machine, kept up until Ctrl-C, and ``encodeq scale``."""
