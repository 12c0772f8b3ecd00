"""The segment service: connectors, and the segment builder's list of targetable audiences."""
