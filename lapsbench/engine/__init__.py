"""The engines: the batch-1 and the batched loop (compiled), their run context and the step pricing."""
