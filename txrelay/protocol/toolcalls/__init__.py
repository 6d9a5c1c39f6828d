"""
Tool-call hygiene for weak backends, sans-IO (the ``tool-hygiene`` stage's core).

- :mod:`.scanner` / :mod:`.markers`: tool calls a model wrote as text (Hermes/Qwen, Mistral,
  Llama, bare JSON) found in a streamed text block;
- :mod:`.arguments`: the offered tools, argument repair and ``input_schema`` validation;
- :mod:`.filter`: the stream filter that turns those calls into ``tool_use`` blocks and makes
  response tool-use ids legal and unique;
- :mod:`.history`: the request history repaired before the upstream sees it (ids, orphaned
  ``tool_use`` / ``tool_result`` blocks);
- :mod:`.ids`: ids derived from the conversation itself.
"""
