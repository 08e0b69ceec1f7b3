"""The benchmark sections `scripts/bench` runs, one module each."""
