"""Command lines: ``selfsup-train`` (``train``), ``selfsup-linear`` (``linear``), ``selfsup-blog`` (``blog``)."""
