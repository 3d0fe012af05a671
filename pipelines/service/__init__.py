"""The stream service: one process that consumes the topic and trains, tracks and registers each
window as it closes (`python -m pipelines.stream`)."""
