"""Analysis on top of the pure core: streaming analyze, views, ladder, tshark cross-check."""
