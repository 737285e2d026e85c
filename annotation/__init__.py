"""Use-cases of the annotation side: candidates and pool, pair sampling, votes, badcases, agreement,
leaderboard and export. Services are plain functions that take a SQLAlchemy session and commit at the end;
domain errors are :mod:`annotation.errors`. The Gradio tabs in ``annotation/ui`` only call these.

Importing this package is cheap; import the submodules (``annotation.votes`` ...) to use them.
"""
