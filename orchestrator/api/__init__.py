"""What every front end shares: the service requests, the views of records as SPEC §6 JSON, the
errors and the socket wire format. Imports nothing of the engine, storage drivers or runtime
beyond ``runtime.durations``."""
