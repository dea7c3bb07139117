"""Draws docs/figures/projection.png, the figure of "What GC does".

Two real training runs with plain SGD, each once with and once without
``optax_gc.centralize()``, from the same initialisation and batches:

(a) one output unit with two inputs (a logistic regression on two features of
    scikit-learn's iris data): the weights move along the line on which their
    sum is constant, and the first step's gradient is drawn beside its
    projection onto that line;
(b) an MLP on scikit-learn's 8x8 digits: the largest change of any output
    unit's fan-in weight sum, per step.

Run from the repository root (a few seconds on a CPU)::

    python docs/figures/make_projection_figure.py

The docs show the committed PNG; tests/test_docs.py runs this script into a
temporary folder and checks the numbers the figure shows.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from sklearn.datasets import load_digits, load_iris

import optax_gc

matplotlib.use("Agg")
import matplotlib.pyplot as plt

OUT = Path(__file__).resolve().parent / "projection.png"


def _train(
    loss_fn: Any, params: Any, batches: tuple[Any, ...], *, lr: float, gc: bool
) -> Any:
    """Plain SGD (with GC ahead of it if ``gc``) over stacked batches.

    Returns the params before and after every step, stacked along a new
    leading axis (one compiled scan per run).
    """
    tx = optax.sgd(lr)
    if gc:
        tx = optax.chain(optax_gc.centralize(), tx)

    def step(carry: Any, batch: Any) -> tuple[Any, Any]:
        params, state = carry
        grads = jax.grad(loss_fn)(params, *batch)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), params

    _, history = jax.jit(jax.lax.scan, static_argnums=0)(
        step, (params, tx.init(params)), batches
    )
    return jax.tree.map(
        lambda p0, ps: np.concatenate([np.asarray(p0)[None], np.asarray(ps)]),
        params,
        history,
    )


def one_unit() -> dict[str, Any]:
    """Logistic regression, two standardised iris features, no bias."""
    iris = load_iris()
    keep = iris.target > 0  # versicolor (1) against virginica (2)
    x = iris.data[keep][:, :2]  # sepal length and width
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    y = (iris.target[keep] == 2).astype(np.float32)

    def loss(params: Any, x: Any, y: Any) -> Any:
        logits = (x @ params["kernel"])[:, 0]  # kernel (in=2, out=1): Flax layout
        return optax.sigmoid_binary_cross_entropy(logits, y).mean()

    w0 = {"kernel": jnp.array([[-1.0], [1.5]])}
    batches = (np.broadcast_to(x, (60, *x.shape)), np.broadcast_to(y, (60, *y.shape)))
    runs = {
        arm: _train(loss, w0, batches, lr=1.0, gc=gc)["kernel"][:, :, 0]
        for arm, gc in (("baseline", False), ("gc", True))
    }
    g = np.asarray(jax.grad(loss)(w0, x, y)["kernel"][:, 0])
    grid = np.linspace(-2.0, 2.5, 91, dtype=np.float32)
    w1, w2 = np.meshgrid(grid, grid)
    kernels = np.stack([w1.ravel(), w2.ravel()], axis=1)
    z = jax.vmap(lambda k: loss({"kernel": k[:, None]}, x, y))(kernels)
    return {"runs": runs, "grad": g, "grid": (w1, w2, np.asarray(z).reshape(w1.shape))}


def mlp_on_digits(steps: int = 300) -> dict[str, np.ndarray]:
    """Per step, the largest |fan-in sum - initial fan-in sum| over all units."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "hidden": {
            "kernel": jax.random.normal(k1, (64, 32)) / 8.0,
            "bias": jnp.zeros(32),
        },
        "out": {
            "kernel": jax.random.normal(k2, (32, 10)) / 32.0**0.5,
            "bias": jnp.zeros(10),
        },
    }

    def loss(params: Any, x: Any, y: Any) -> Any:
        h = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"][None])
        logits = h @ params["out"]["kernel"] + params["out"]["bias"][None]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    rng = np.random.default_rng(0)
    idx = np.stack([rng.choice(len(y), size=64, replace=False) for _ in range(steps)])
    batches = (x[idx], y[idx])

    def drift(history: Any) -> np.ndarray:
        # Fan-in sums per step and unit (the kernels are (in, out): axis 1).
        sums = [history[k]["kernel"].sum(axis=1) for k in ("hidden", "out")]
        return np.max([np.abs(s[1:] - s[:1]).max(axis=1) for s in sums], axis=0)

    return {
        arm: drift(_train(loss, params, batches, lr=0.1, gc=gc))
        for arm, gc in (("baseline", False), ("gc", True))
    }


def main(out: str | Path = OUT, *, steps: int = 300) -> dict[str, float]:
    """Trains, draws the figure into ``out``; returns each arm's largest drift.

    ``steps`` is the length of the digits run (panel b).
    """
    unit = one_unit()
    digits = mlp_on_digits(steps)
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(11, 4.6))

    w1, w2, z = unit["grid"]
    levels = np.quantile(z, np.linspace(0.0, 0.7, 14) ** 2)  # denser near the minimum
    ax_a.contour(w1, w2, z, levels=levels, colors="0.8", linewidths=0.8)
    runs = unit["runs"]
    start = runs["gc"][0]
    line = np.linspace(-2.0, 2.5, 2)
    ax_a.plot(
        line, start.sum() - line, ":", color="0.4", label="$w_1 + w_2$ = initial sum"
    )
    ax_a.plot(*runs["baseline"].T, ".-", color="tab:orange", ms=3, label="SGD")
    ax_a.plot(*runs["gc"].T, ".-", color="tab:blue", ms=3, label="SGD + GC")
    ax_a.plot(*start, "ko", ms=4)
    g = unit["grad"]
    pg = g - g.mean()
    arrow = {"width": 0.02, "length_includes_head": True, "head_width": 0.07}
    ax_a.arrow(*start, *-g, color="tab:orange", **arrow)
    ax_a.arrow(*start, *-pg, color="tab:blue", **arrow)
    ax_a.set(
        xlim=(-2, 2.5),
        ylim=(-2, 2.5),
        aspect="equal",
        xlabel="$w_1$ (sepal length)",
        ylabel="$w_2$ (sepal width)",
        title="(a) one output unit, fan-in 2: first steps $-g$ and $-Pg$",
    )
    ax_a.legend(loc="upper right", fontsize=8)

    steps = np.arange(1, len(digits["gc"]) + 1)
    # float32 rounding can leave exact zeros; keep them on the log axis.
    tiny = np.finfo(np.float32).tiny
    ax_b.semilogy(steps, digits["baseline"] + tiny, color="tab:orange", label="SGD")
    ax_b.semilogy(steps, digits["gc"] + tiny, color="tab:blue", label="SGD + GC")
    ax_b.set(
        xlabel="step",
        ylabel="max over units of |fan-in sum - initial|",
        title="(b) MLP 64-32-10 on digits, plain SGD",
    )
    ax_b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return {arm: float(d.max()) for arm, d in digits.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(OUT), help="where to write the PNG")
    parser.add_argument("--steps", type=int, default=300, help="digits run length")
    args = parser.parse_args()
    drift = main(args.out, steps=args.steps)
    print(
        f"largest fan-in sum drift over {args.steps} steps: "
        f"with GC {drift['gc']:.1e}, without {drift['baseline']:.1e}"
    )
