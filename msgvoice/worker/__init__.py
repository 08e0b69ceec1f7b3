"""The worker wing: the child process that loads one engine (contract: `protocol.py`)."""
