"""Small pure-Python references of the Rust core: the oracles of the property tests and the baselines of bench/."""
