"""
The package txrelay searches for stage and backend plugins.

Any directory named ``txrelay/plugins`` on ``sys.path`` that has no ``__init__.py`` adds its
modules here, so an operator's stage or backend kind is a module dropped into such a directory
(``PYTHONPATH=/etc/txrelay/site``), not a fork.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
