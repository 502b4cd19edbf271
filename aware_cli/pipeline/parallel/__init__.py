"""Training under torchrun: ranks, collectives and gradient sums (`distributed`), FSDP2 sharding (`fsdp`)."""
