"""Label heads: training the classifiers that guess a face's labels from its embedding.

    heads   reviewed labels + face vectors -> :class:`agents.labelheads.LabelHeads`,
            scored out of fold with every subject's faces on one side

Example::

    from trainer.labels import train_heads

    train_heads(vectors, {"gender": values}, subjects=subjects).save(heads_path(settings))
"""

from trainer.labels.heads import subject_folds, train_heads

__all__ = ["subject_folds", "train_heads"]
