"""Clean rows used both ways: as training rows and as hypergradient data.

AMAL needs a small clean (validation) set for its hypergradients, and those clean labels are
also the best training data there is: a method that spends them only on hypergradients
usually loses to plain training on them. This module provides the two pieces to do both:

- :func:`cross_fit` splits the clean rows into folds that take turns as **training rows**,
  **hypergradient (meta) rows** and **selection rows** (model selection and early stopping
  see rows that neither trained the model nor produced a hypergradient);
- :func:`mixed_batch_indices` draws every training batch with a fixed share of clean rows,
  so that thousands of weak rows cannot drown a few hundred clean ones.

The recipe: give the clean rows their own loss column (cross-entropy to their label, zero
elsewhere) and keep its weight fixed, e.g. with :func:`amal_jax.trust_table`'s ``fixed``;
the auxiliary columns (rules, teachers, noisy labels) are zero on the clean rows and get a
learned trust. If every auxiliary target is noise, their trust goes to 0 and training
reduces to training on the clean rows; where they carry signal, they add to it::

    folds = amal_jax.clean.cross_fit(num_clean, num_folds=3)
    for roles in folds:                       # one model per fold; average their scores
        mixer = amal_jax.trust_table(n_weak + len(roles.train), 1 + m,
                                     trust_init=(1.0,) + (0.1,) * m, fixed=(0,))
        ...
        weak_idx, clean_idx = amal_jax.clean.mixed_batch_indices(
            rng, n_weak, len(roles.train), batch_size=64, clean_share=0.5, steps=100)
        for w, c in zip(weak_idx, clean_idx):
            batch = concatenate(weak_rows[w], clean_rows[roles.train[c]])  # ids n_weak + c
            val = clean_rows[rng.choice(roles.meta, 64)]
            state, metrics = amal_jax.step(state, batch, val)
        # select the epoch on clean_rows[roles.select]

With ``scheme="shared"`` the training rows are also the hypergradient rows (each fold trains
on all clean rows but the selection fold, as plain training on them would); with
``scheme="rotate"`` they are disjoint (one fold trains, the next feeds hypergradients).
"""

from amal_jax._src.clean import (
    SCHEMES,
    FoldRoles,
    clean_rows_per_batch,
    cross_fit,
    mixed_batch_indices,
)

__all__ = ["SCHEMES", "FoldRoles", "clean_rows_per_batch", "cross_fit", "mixed_batch_indices"]
