"""Audio work both sides of the worker pipe do (numpy, soxr, PyAV): shaping, stretching,
resampling and encoding. It knows nothing of jobs, chats or workers."""
