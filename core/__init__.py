"""The core every service stands on: the job model, storage and its object layout, events, errors,
failure records and the live job model. It imports only ``config``."""
