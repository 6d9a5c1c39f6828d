"""
The ``tool-intercept`` stage: Anthropic's web search and web fetch server tools, run by the
relay for backends that cannot run them (see :mod:`.stage`).

Modules: :mod:`.servertools` (sans-IO: request rewriting, result blocks, domain rules),
:mod:`.addresses` (which IP addresses a fetch may reach), :mod:`.extract` (HTML/PDF text),
:mod:`.search` (search providers), :mod:`.fetch` (the SSRF-safe fetcher), :mod:`.stage`.
"""
