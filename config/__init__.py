"""Configuration in one place: settings, queue topology, rendition ladder, retry policy."""
