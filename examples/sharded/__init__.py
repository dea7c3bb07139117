"""Sharded example: data-parallel + FSDP training with GC over a device mesh."""
