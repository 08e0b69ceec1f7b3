"""TTS engines. Imported only inside the worker process, never by the daemon."""
