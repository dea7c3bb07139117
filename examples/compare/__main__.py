"""GC vs no GC on the article's CNN: ``python -m examples.compare``.

Flags: ``--workdir`` (the output folder; default outputs/compare-<dataset>)
and ``--config.<field>=value`` for any field of
examples/compare/configs/default.py, e.g. ``--config.dataset=fashion_mnist
--config.seeds=5 --config.epochs=3``. See examples/compare/README.md.
"""

if __name__ == "__main__":  # not when imported (pytest's doctest collection)
    from examples.compare.main import main

    main()
