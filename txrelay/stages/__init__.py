"""Built-in pipeline stages (registered as plugins in ``txrelay/plugins/txrelay_builtin.py``)."""
