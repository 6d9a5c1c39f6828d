"""The request history repaired before the upstream sees it; ids derived from the conversation."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from txrelay.protocol.anthropic import InputMessage
from txrelay.protocol.toolcalls.history import INTERRUPTED, repair_history
from txrelay.protocol.toolcalls.ids import derived_id, is_legal_id


def use(tool_id: Any, name: str = "Read") -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": name, "input": {}}


def result(tool_id: Any, content: Any = "ok", **more: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": content, **more}


def msgs(*pairs: tuple[str, Any]) -> list[InputMessage]:
    return [InputMessage(role, content) for role, content in pairs]  # type: ignore[arg-type]


def dump(messages: list[InputMessage]) -> list[tuple[str, Any]]:
    return [(m.role, m.content) for m in messages]


def test_a_sound_history_is_the_same_list() -> None:
    history = msgs(("user", "hi"), ("assistant", [use("toolu_1")]),
                   ("user", [result("toolu_1")]), ("assistant", "done"))
    repaired = repair_history(history)
    assert not repaired.changed and repaired.messages == history
    assert repaired.tool_ids == {"toolu_1"}


def test_illegal_and_duplicated_ids_are_replaced_with_their_results() -> None:
    history = msgs(("user", "hi"),
                   ("assistant", [{"type": "text", "text": "x"}, use("call.1:a"), use("dup")]),
                   ("user", [result("dup"), result("call.1:a")]),
                   ("assistant", [use("dup")]),
                   ("user", [result("dup", "second")]))
    out = dump(repair_history(history).messages)
    first, second = derived_id(1, 1, "call.1:a"), derived_id(3, 0, "dup")
    assert out[1][1][1]["id"] == first and out[1][1][2]["id"] == "dup"
    assert [b["tool_use_id"] for b in out[2][1]] == ["dup", first]
    assert out[3][1][0]["id"] == second
    assert out[4][1] == [result(second, "second")]
    assert all(is_legal_id(i) for i in (first, second)) and first != second


def test_the_same_history_maps_the_same_way_every_time() -> None:
    history = msgs(("user", "hi"), ("assistant", [use(""), use("a b")]),
                   ("user", [result(""), result("a b")]))
    runs = [dump(repair_history(list(history)).messages) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    # The same history one turn later: the earlier messages map exactly as before.
    later = [*history, *msgs(("assistant", "ok"), ("user", "more"))]
    assert dump(repair_history(later).messages)[:3] == runs[0]


def test_a_call_without_result_gets_an_interrupted_error_result_first() -> None:
    history = msgs(("user", "hi"), ("assistant", [use("toolu_a"), use("toolu_b")]),
                   ("user", [result("toolu_b"), {"type": "text", "text": "go on"}]))
    out = dump(repair_history(history).messages)
    assert out[2][1] == [
        {"type": "tool_result", "tool_use_id": "toolu_a", "is_error": True,
         "content": INTERRUPTED},
        result("toolu_b"), {"type": "text", "text": "go on"}]


def test_a_user_message_as_string_after_calls() -> None:
    history = msgs(("user", "hi"), ("assistant", [use("toolu_a")]), ("user", "never mind"))
    out = dump(repair_history(history, interrupted="stopped").messages)
    assert out[2][1] == [{"type": "tool_result", "tool_use_id": "toolu_a", "is_error": True,
                          "content": "stopped"}, {"type": "text", "text": "never mind"}]


def test_two_assistant_messages_in_a_row_get_a_user_message_between() -> None:
    history = msgs(("user", "hi"), ("assistant", [use("toolu_a")]), ("assistant", "hm"))
    out = dump(repair_history(history).messages)
    assert [r for r, _ in out] == ["user", "assistant", "user", "assistant"]
    assert out[2][1][0]["tool_use_id"] == "toolu_a"


def test_a_final_assistant_message_with_a_call_is_left_to_continue() -> None:
    history = msgs(("user", "hi"), ("assistant", [use("toolu_a")]))
    assert not repair_history(history).changed


def test_an_orphaned_result_becomes_text_or_is_dropped() -> None:
    content = [{"type": "text", "text": "file body"},
               {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                            "data": "AA=="}}]
    history = msgs(("user", "hi"), ("assistant", "plain"),
                   ("user", [result("toolu_gone", content, is_error=True),
                             {"type": "text", "text": "and?"}]))
    out = dump(repair_history(history).messages)
    text, image, tail = out[2][1]
    assert text["type"] == "text" and "toolu_gone" in text["text"]
    assert text["text"].endswith("file body") and "error" in text["text"]
    assert image["type"] == "image" and tail == {"type": "text", "text": "and?"}
    dropped = dump(repair_history(history, orphan_results="drop").messages)
    assert dropped[2][1] == [{"type": "text", "text": "and?"}]
    alone = msgs(("user", "hi"), ("assistant", "plain"), ("user", [result("toolu_gone")]))
    kept = dump(repair_history(alone, orphan_results="drop").messages)[2][1]
    assert [b["type"] for b in kept] == ["text"]  # never an empty message


def test_a_result_for_an_older_call_is_an_orphan() -> None:
    history = msgs(("user", "hi"), ("assistant", [use("toolu_a")]),
                   ("user", [result("toolu_a")]), ("assistant", "x"),
                   ("user", [result("toolu_a")]))
    out = dump(repair_history(history).messages)
    assert out[4][1][0]["type"] == "text"


def test_ids_left_alone_when_fixing_is_off() -> None:
    history = msgs(("user", "hi"), ("assistant", [use("a.b")]), ("user", [result("a.b")]))
    assert not repair_history(history, fix_ids=False).changed


ids = st.sampled_from(["toolu_1", "toolu_2", "a.b", "", "x y", "toolu_1"])


@given(st.lists(st.tuples(st.lists(ids, max_size=3), st.lists(ids, max_size=3)), max_size=5))
def test_any_history_comes_out_sound(turns: list[tuple[list[str], list[str]]]) -> None:
    history = [InputMessage("user", "start")]
    for uses, results in turns:
        history.append(InputMessage("assistant", [use(i) for i in uses] or "t"))
        history.append(InputMessage("user", [result(i) for i in results] or "u"))
    repaired = repair_history(history)
    out = repaired.messages
    seen: list[str] = []
    for prev, msg in itertools.pairwise(out):
        if msg.role == "assistant":
            seen += [b["id"] for b in msg.blocks() if b["type"] == "tool_use"]
        if msg.role == "user" and prev.role == "assistant":
            wanted = [b["id"] for b in prev.blocks() if b["type"] == "tool_use"]
            got = [b["tool_use_id"] for b in msg.blocks() if b["type"] == "tool_result"]
            assert sorted(got) == sorted(wanted)
            assert [b["type"] for b in msg.blocks()][:len(got)] == ["tool_result"] * len(got)
    assert len(seen) == len(set(seen)) and all(is_legal_id(i) for i in seen)
    assert repair_history(out).changed is False  # repairing is idempotent
    assert dump(repair_history(history).messages) == dump(out)  # and deterministic


def test_derived_ids_are_legal_and_distinct() -> None:
    made = {derived_id(m, b, o) for m in range(20) for b in range(5) for o in ("", "x")}
    assert len(made) == 200 and all(is_legal_id(i) for i in made)
    assert derived_id(3, 1, "x") == derived_id(3, 1, "x")
