"""Layer 5, the report: figures, the HTML summary and ``summary_statistics.json``.

Pure functions of analysis results (no model, no pytest hooks); the plugin calls them.
"""
