"""Writers: morph-net's widths JSON, the per-layer table and rebuilt models (DESIGN section 6).

The stage right of the analyzers and the only place besides ``importers/`` and
``regularizers/`` where frameworks are used (lazily, to write rebuilt models).
"""
