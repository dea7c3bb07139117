"""Default hyperparameters: a 2-block character transformer, Adam, 3 seeds.

About 155 s of CPU time (both arms, all seeds, compilation and checks included).
Override on the command line, e.g. ``--config.steps=2000 --config.seeds=5``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The transformer's defaults; ``train_and_evaluate`` reads every field.

    Example:
        >>> from examples.transformer.configs import default
        >>> print(default.get_config().arms)
        gc,baseline
    """
    config = ml_collections.ConfigDict()
    # Data: docstrings of a fixed list of standard-library modules of the
    # running Python (about 290k characters), first corpus_chars of them.
    config.corpus_chars = 300_000
    config.held_out_fraction = 0.1

    # Model: context length, width, heads, blocks and MLP width / dim.
    config.update(context=64, dim=64, heads=4, layers=2, mlp_ratio=4)

    # Training: "adam", "rmsprop" or "sgd" (with momentum; 0 for plain SGD).
    config.optimizer = "adam"
    config.learning_rate = 3e-3
    config.momentum = 0.9
    config.batch_size = 32
    config.steps = 300
    config.eval_every = 100
    config.eval_windows = 256
    config.seeds = 3
    # Arms, comma-separated: "gc" (centralize with fan_in_axes(model)),
    # "baseline" (the optimizer alone) and optionally "rank_rule" (plain
    # centralize(): every axis but the last, whatever the layer).
    config.arms = "gc,baseline"

    # The weight-hyperplane check: plain SGD for a few steps.
    config.check_steps = 5
    config.check_learning_rate = 0.1
    return config
