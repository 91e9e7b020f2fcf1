"""The engine: requests in, tokens out. The loop thread that owns the model, the scheduler
(continuous batching) and one sample's state; the model itself runs in the top-level runtime/."""
