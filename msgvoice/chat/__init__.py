"""The chat wing: commands, routing, the lane and the journal (contract: `port.py`)."""
