"""Backends: one module per store, all behind the contract in :mod:`membound.backends.base`."""
