"""The lazy plugin factories (txrelay/lazyplugin.py) and the built-in plugins made with them."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import attrs
import pytest
from twisted.plugin import IPlugin, getPlugins
from zope.interface.verify import verifyObject

from txrelay import plugins
from txrelay.interfaces import IBackendFactory, IStageFactory
from txrelay.lazyplugin import LazyBackendFactory, LazyStageFactory, resolve
from txrelay.plugins import txrelay_backends, txrelay_builtin


def test_resolve_imports_and_returns_the_named_attribute() -> None:
    from txrelay.protocol import errors

    assert resolve("txrelay.protocol.errors:api_error") is errors.api_error


@pytest.mark.parametrize("ref", ["txrelay.stages.auth", "txrelay.stages.auth:", ":build_auth",
                                 "a:b:c"])
def test_a_malformed_reference_is_refused_when_the_factory_is_made(ref: str) -> None:
    with pytest.raises(ValueError, match=r"is not 'package\.module:attribute'"):
        LazyStageFactory(type_name="x", builder=ref)
    with pytest.raises(ValueError, match=r"is not 'package\.module:attribute'"):
        LazyBackendFactory(kind="x", builder="m:f", options=ref)


def test_a_reference_to_a_missing_attribute_fails_on_use_not_on_listing() -> None:
    factory = LazyStageFactory(type_name="x", builder="txrelay.protocol.errors:no_such_thing")
    with pytest.raises(AttributeError, match="no_such_thing"):
        factory.build(None, None)  # type: ignore[arg-type]


def _builtin() -> list[Any]:
    return [v for m in (txrelay_backends, txrelay_builtin) for v in vars(m).values()
            if isinstance(v, (LazyBackendFactory, LazyStageFactory))]


def test_every_builtin_plugin_is_lazy_and_every_reference_resolves() -> None:
    found = _builtin()
    assert {f.kind for f in found if isinstance(f, LazyBackendFactory)} == {
        "demo", "openai-chat", "anthropic", "gemini"}
    assert {f.type_name for f in found if isinstance(f, LazyStageFactory)} == {
        "auth", "model-map", "translate", "tool-hygiene", "tool-intercept", "identity-guard",
        "limits"}
    for f in found:
        verifyObject(IPlugin, f)
        for name, value in attrs.asdict(f).items():
            if name in ("builder", "options", "model_options") and value is not None:
                assert resolve(value) is not None, (f, name)
        assert callable(resolve(f.builder))
        if f.options is not None:
            assert attrs.has(f.options_type), f
        else:
            assert f.options_type is None
    assert all(verifyObject(IBackendFactory, f) for f in found
               if isinstance(f, LazyBackendFactory))
    assert all(verifyObject(IStageFactory, f) for f in found if isinstance(f, LazyStageFactory))


def test_twisted_lists_the_builtin_plugins() -> None:
    kinds = {f.kind for f in getPlugins(IBackendFactory, plugins)}
    stages = {f.type_name for f in getPlugins(IStageFactory, plugins)}
    assert {"demo", "openai-chat", "anthropic", "gemini"} <= kinds
    assert {"auth", "model-map", "translate", "limits"} <= stages


def test_the_demo_backend_builds_through_its_factory() -> None:
    from txrelay.upstream.demo import DemoBackend, DemoOptions

    reactor = object()
    context = SimpleNamespace(reactor=reactor)  # all the demo backend reads
    backend = txrelay_backends.demo.build(DemoOptions(), context)  # type: ignore[arg-type]
    assert isinstance(backend, DemoBackend)
    assert backend.reactor is reactor


def test_listing_the_plugins_imports_no_implementation() -> None:
    # in a fresh interpreter: this one has imported the implementations already
    code = ("import sys; from txrelay.plugins import txrelay_backends, txrelay_builtin; "
            "print(sorted(m for m in sys.modules if m.startswith(('txrelay.upstream.', "
            "'txrelay.stages.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
