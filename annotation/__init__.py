"""The annotation side, in layers (each imports only the ones below it):

- :mod:`annotation.ui` — the Gradio app: tab builders, thin handlers, sign-in, wiring;
- :mod:`annotation.generation` — the generation service (request, GPU queue, faces, safety, downloads);
- :mod:`annotation.privacy` — uploads, visitor data, private downloads and retention;
- :mod:`annotation.store` — the preference store's queries (candidates, sampling, votes, badcases, agreement,
  leaderboard, export, users, model versions).

``annotation.commands`` (the ``idglow`` sub-commands) and ``annotation.crashcheck`` sit on top. Importing this
package is cheap; import the submodules (``annotation.store.votes`` ...) to use them.
"""
