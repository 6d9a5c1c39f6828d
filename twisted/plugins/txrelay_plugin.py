"""The ``relay`` subcommand of twistd: ``twistd -n relay --config relay.toml``."""

from twisted.application.service import ServiceMaker

txrelay = ServiceMaker(
    "txrelay", "txrelay.tap", "Anthropic Messages API relay for any model backend", "relay"
)
