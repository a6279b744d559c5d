"""HTTP and WebSocket translation only: parse the request, call the node or store, write
the answer. Dependencies arrive through ``initialize()``; no SQL, no fan-out loops."""
