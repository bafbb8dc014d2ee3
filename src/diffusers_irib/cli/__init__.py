"""Console entry points: ``irib-degrade``, ``irib-restore``, ``irib-demo``, ``irib-convert-osediff``."""
