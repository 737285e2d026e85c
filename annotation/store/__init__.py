"""The preference store's use-cases: candidates and pool, pair sampling, votes, badcases, agreement,
leaderboard, export, users and model versions. Plain functions that take a SQLAlchemy session and commit at
the end; domain errors are :mod:`annotation.store.errors`. Imports only ``db`` and ``idglow``."""
