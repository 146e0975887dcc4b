"""Label heads: training the classifiers that guess a face's labels from its embedding.

    heads   reviewed labels + face vectors -> :class:`agents.labelheads.LabelHeads`

Example::

    from trainer.labels import train_heads

    train_heads(vectors, {"gender": values}, seed=0).save(heads_path(settings))
"""

from trainer.labels.heads import train_heads

__all__ = ["train_heads"]
