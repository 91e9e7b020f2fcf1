"""The engine: requests in, tokens out. Scheduler (continuous batching), sampler, and
the loop thread that owns the model."""
