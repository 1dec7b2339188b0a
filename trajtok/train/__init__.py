"""DeepSpeed training: engine, loop, checkpoints."""
