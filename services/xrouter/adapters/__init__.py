"""Model-tool adapters: the priced catalog and the calls on real model backends."""
