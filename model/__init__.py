"""The model stage: prompt, inference backends, output schema, and the Analyzer that ties them together.

Entry point: `model.analyzer.Analyzer.from_settings(ModelSettings(...), link=...)`. Backends are imported
lazily, so importing this package loads no inference library.
"""
