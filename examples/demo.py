"""Gradient Centralization on a small Flax NNX CNN, offline, in seconds.

Trains the same CNN on scikit-learn's bundled 8x8 digits twice per seed, from
the same initialisation and with the same batch order: once with
``optax.chain(optax_gc.centralize(), optax.sgd(lr, momentum=0.9))`` and once
with plain ``optax.sgd(lr, momentum=0.9)``. It prints held-out accuracy over
seeds, the paired per-seed difference, and three checks that GC really ran.

    python examples/demo.py --seeds 3 --epochs 5
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import optax_gc

Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def load_data(test_fraction: float = 0.2) -> Data:
    """The digits as (N, 8, 8, 1) float32 in [0, 1], split after a seeded shuffle."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(y))
    train, test = np.split(perm, [len(y) - int(len(y) * test_fraction)])
    return x[train], y[train], x[test], y[test]


class CNN(nnx.Module):
    """Two 3x3 convs, a 2x2 max pool and two dense layers."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(1, 16, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), rngs=rngs)
        self.fc1 = nnx.Linear(4 * 4 * 32, 64, rngs=rngs)
        self.fc2 = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for a batch of (8, 8, 1) images."""
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        return self.fc2(nnx.relu(self.fc1(x.reshape(x.shape[0], -1))))


def loss_fn(model: CNN, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy."""
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def fan_in(x: Any) -> tuple[int, ...]:
    """A Flax kernel's fan-in axes: every axis but the last."""
    return tuple(range(x.ndim - 1))


def fan_in_means(tree: Any) -> dict[str, jax.Array]:
    """Per kernel (rank >= 2), the largest |mean over its fan-in axes|."""
    return {
        "/".join(str(k.key) for k in path): jnp.abs(x.mean(fan_in(x))).max()
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
        if x.ndim >= 2
    }


@nnx.jit
def train_step(model: CNN, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array):
    """One step; returns the fan-in means of the update it applied."""
    grads = nnx.grad(loss_fn)(model, x, y)
    return fan_in_means(optimizer.update(model, grads))


@nnx.jit
def evaluate(model: CNN, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Loss and accuracy on a whole set."""
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits.argmax(-1) == y).mean()


def train(tx: optax.GradientTransformation, data: Data, seed: int, args: Any) -> dict:
    """Trains one arm; the same seed gives the same init and batch order."""
    x_tr, y_tr, x_te, y_te = data
    model = CNN(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    rng, bs, worst = np.random.default_rng(seed), args.batch_size, None
    for _ in range(args.epochs):
        perm = rng.permutation(len(y_tr))
        for i in range(len(y_tr) // bs):  # drop the ragged last batch: one compile
            idx = perm[i * bs : (i + 1) * bs]
            means = train_step(model, optimizer, x_tr[idx], y_tr[idx])
            worst = means if worst is None else jax.tree.map(jnp.maximum, worst, means)
    train_loss, _ = evaluate(model, x_tr, y_tr)
    _, test_acc = evaluate(model, x_te, y_te)
    worst = {k: float(v) for k, v in worst.items()}
    return {"loss": float(train_loss), "test_acc": float(test_acc), "upd": worst}


def sgd(lr: float, *, momentum: float | None, gc: bool) -> optax.GradientTransformation:
    """SGD, with Gradient Centralization ahead of it if ``gc``."""
    tx = optax.sgd(lr, momentum=momentum)
    return optax.chain(optax_gc.centralize(), tx) if gc else tx


def kernels(model: CNN) -> list[np.ndarray]:
    """Every kernel, in float64 so differences of float32 weights are exact."""
    layers = (model.conv1, model.conv2, model.fc1, model.fc2)
    return [np.asarray(layer.kernel[...], np.float64) for layer in layers]


def hyperplane_check(data: Data, lr: float, steps: int = 5) -> dict[str, float]:
    """Plain SGD (no momentum): GC keeps each fan-in weight sum where it began."""
    out = {}
    for arm in ("gc", "baseline"):
        model = CNN(nnx.Rngs(0))
        tx = sgd(lr, momentum=None, gc=arm == "gc")
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        w0 = kernels(model)
        for i in range(steps):
            batch = slice(i * 64, (i + 1) * 64)
            train_step(model, optimizer, data[0][batch], data[1][batch])
        dw = [w - v for w, v in zip(kernels(model), w0, strict=True)]
        out[f"{arm}_sum_change"] = max(np.abs(d.sum(fan_in(d))).max() for d in dw)
        out[f"{arm}_weight_change"] = max(np.abs(d).max() for d in dw)
    return {k: float(v) for k, v in out.items()}


def wrong_axis_check(data: Data) -> dict[str, float]:
    """optax.centralize() (PyTorch rule) vs optax_gc on the (in, out) head kernel."""
    grads = nnx.jit(nnx.grad(loss_fn))(CNN(nnx.Rngs(0)), data[0][:256], data[1][:256])
    g = {"kernel": grads["fc2"]["kernel"][...]}  # (64, 10): (in, out)
    out = {}
    for name, tx in (("optax", optax.centralize()), ("gc", optax_gc.centralize())):
        c = tx.update(g, tx.init(g))[0]["kernel"]
        out[f"{name}_col_mean"] = float(jnp.abs(c.mean(0)).max())  # per output unit
        out[f"{name}_row_mean"] = float(jnp.abs(c.mean(1)).max())  # per input
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the comparison and the checks; returns every number it prints."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    args = p.parse_args(argv)
    start, data = time.perf_counter(), load_data()
    res: dict[str, Any] = {}
    for arm in ("gc", "baseline"):
        tx = sgd(args.lr, momentum=0.9, gc=arm == "gc")
        runs = [train(tx, data, seed, args) for seed in range(args.seeds)]
        res[arm] = {k: np.array([r[k] for r in runs]) for k in ("test_acc", "loss")}
        res[arm]["update_fan_in_mean"] = jax.tree.map(
            lambda *v: max(v), *(r["upd"] for r in runs)
        )
    gc, base = res["gc"], res["baseline"]
    res["diff"] = gc["test_acc"] - base["test_acc"]
    res["hyperplane"] = plane = hyperplane_check(data, args.lr)
    res["wrong_axis"] = wrong = wrong_axis_check(data)

    print(
        f"8x8 digits, {len(data[1])} train / {len(data[3])} test images. SGD lr "
        f"{args.lr}, momentum 0.9, batch {args.batch_size}, epochs: {args.epochs}.\n"
    )
    print(f"{'arm':<10}{'test accuracy':>22}{'train loss':>12}")
    for arm in ("gc", "baseline"):
        a, loss = res[arm]["test_acc"], res[arm]["loss"].mean()
        print(f"{arm:<10}{a.mean():>13.4f} ± {a.std():.4f}{loss:>12.4f}")
    print(
        "GC - baseline accuracy, per seed:", ", ".join(f"{d:+.4f}" for d in res["diff"])
    )
    print(f"(seeds: {args.seeds}. That shows a spread; it is no significance test.)\n")
    print("Is GC active? (a) largest |fan-in mean| of an applied update:")
    for k, v in gc["update_fan_in_mean"].items():
        print(f"    {k:<14} GC {v:.1e}   baseline {base['update_fan_in_mean'][k]:.1e}")
    print(
        "(b) plain SGD, 5 steps: largest change of any output unit's fan-in weight sum"
    )
    print(
        f"    GC {plane['gc_sum_change']:.1e}, baseline "
        f"{plane['baseline_sum_change']:.1e}; GC weights moved up to "
        f"{plane['gc_weight_change']:.1e}"
    )
    print("(c) (64, 10) head kernel gradient, largest |mean per output unit| after")
    print(
        f"    optax.centralize() {wrong['optax_col_mean']:.1e} (PyTorch rule: it "
        f"zeroed the per-input means instead, {wrong['optax_row_mean']:.1e})"
    )
    print(f"    optax_gc.centralize() {wrong['gc_col_mean']:.1e}")
    res["seconds"] = time.perf_counter() - start
    print(f"\nDone in {res['seconds']:.1f} s.")
    return res


if __name__ == "__main__":
    main()
