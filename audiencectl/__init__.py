"""The operator's command line (``audiencectl``)."""
