"""The process: the composition root (lock, storage, workflow modules, pools), the socket server
and the ``wf daemon`` life."""
