"""The model stage: prompt, inference backends, output schema, and the Analyzer that ties them together.

Entry point: `model.analyzer.Analyzer.from_settings(ModelSettings(...), link=...)`. Backends are imported
lazily, so importing this package loads no inference library.
"""

import os

# llama.cpp's CPU threads are OpenMP threads, which spin while they wait for each other. On a two-core machine
# that also fetches and extracts pages, spinning threads crowd each other out: 680 ms a token with two threads
# against 107 ms when waiting threads sleep (measured at load 6). libgomp reads this once, when llama_cpp is
# first imported, so it is set here, before any backend loads; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
