"""Inference backends behind one interface (`base.Backend`); `base.load_backend` picks one by name."""
