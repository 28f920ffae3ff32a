"""Clean-video filter (VPT paper App. A): frame classifier, clean segments, metadata filters."""
