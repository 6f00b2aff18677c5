"""Use-cases that combine stores (accounts, patients, letters…); routers call these."""
