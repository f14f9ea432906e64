"""Power-cut model for the reliability checks: an LD_PRELOAD shim logging unsynced writes to
the database and its WAL (``shim.c``), and the driver that tears them after a kill
(``apply.py``)."""
