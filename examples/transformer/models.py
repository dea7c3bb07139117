"""A small decoder-only character transformer in Flax NNX."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class Block(nnx.Module):
    """Pre-norm residual block: causal self-attention, then a GELU MLP.

    Args:
        dim: Width of the residual stream.
        heads: Attention heads; ``dim`` must divide by it.
        mlp_ratio: Hidden width of the MLP, in multiples of ``dim``.
        rngs: Flax NNX random streams.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int, *, rngs: nnx.Rngs) -> None:
        self.attn_norm = nnx.LayerNorm(dim, rngs=rngs)
        # query/key/value kernels (dim, heads, dim // heads), out (heads, ., dim)
        self.attn = nnx.MultiHeadAttention(
            num_heads=heads, in_features=dim, decode=False, rngs=rngs
        )
        self.mlp_norm = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp_up = nnx.Linear(dim, mlp_ratio * dim, rngs=rngs)
        self.mlp_down = nnx.Linear(mlp_ratio * dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """``x`` (batch, length, dim) -> same shape."""
        x = x + self.attn(self.attn_norm(x), mask=mask)
        return x + self.mlp_down(nnx.gelu(self.mlp_up(self.mlp_norm(x))))


class CharTransformer(nnx.Module):
    """Embeddings, a scanned stack of ``layers`` blocks, a norm and a head.

    Args:
        vocab_size: Number of distinct characters.
        context: Longest input, for the position table.
        dim: Width of the residual stream.
        heads: Attention heads per block.
        layers: Number of blocks.
        mlp_ratio: MLP width in multiples of ``dim``.
        rngs: Flax NNX random streams.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        context: int,
        dim: int,
        heads: int,
        layers: int,
        mlp_ratio: int = 4,
        rngs: nnx.Rngs,
    ) -> None:
        self.token_embed = nnx.Embed(vocab_size, dim, rngs=rngs)
        self.position_embed = nnx.Embed(context, dim, rngs=rngs)

        # One stack of ``layers`` blocks, made by nnx.vmap and run by
        # nnx.scan: every block parameter has a leading layer axis, e.g. a
        # query kernel (layers, dim, heads, dim // heads). Plain centralize()
        # would average over that axis; fan_in_axes(model) does not.
        @nnx.split_rngs(splits=layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(rngs: nnx.Rngs) -> Block:
            return Block(dim, heads, mlp_ratio, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.final_norm = nnx.LayerNorm(dim, rngs=rngs)
        # An untied head: a Linear (dim, vocab) with one weight vector per
        # character, which GC centralizes; the embedding tables it leaves alone.
        self.head = nnx.Linear(dim, vocab_size, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """Next-character logits (batch, length, vocab) for ids (batch, length)."""
        positions = jnp.arange(ids.shape[1])
        x = self.token_embed(ids) + self.position_embed(positions)[None]
        mask = nnx.make_causal_mask(ids)

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def through(x: jax.Array, block: Block) -> jax.Array:
            return block(x, mask)

        return self.head(self.final_norm(through(x, self.blocks)))
