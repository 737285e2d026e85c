"""Visitor privacy and retention: safe upload decoding and the registry of raw uploads, visitor ids and their
data, private downloads, and the sweeper that deletes what a visitor left behind. Built on the store."""
