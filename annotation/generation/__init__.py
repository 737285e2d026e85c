"""The generation service: a visitor's request checked and queued for the GPU, the pipeline run, the faces of
the reference photos, the safety checks, the stored results and their downloads. Built on the store and the
privacy layer."""
