"""Shipped format specs (TOML data files, one per input format), installed as `dsprep.formats`."""
