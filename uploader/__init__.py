"""The uploader service: put a source in storage, write its manifest, start its job."""
