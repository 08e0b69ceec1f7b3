"""TTS engines. Each imports only `msgvoice.worker.protocol` (and a sibling engine)."""
