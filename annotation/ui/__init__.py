"""The Gradio app: tab builders (``generate_tab``, ``annotate_tab``, ``research_tab``), their handlers, sign-in
and the app settings. Importing this package is cheap; ``annotation.ui.blocks`` imports gradio."""
