"""docs/protocol.md is enough to write a client (issue 17, hole 6): the worked example's bytes
are rebuilt from the document's own values with a stock msgpack packer and the config_hash
recipe is recomputed (tests/simulation/test_protocol_doc_spaces.py checks the table of spaces
against the simulated robots)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import msgpack

from protocol.codec import decode
from protocol.messages import Hello
from protocol.spaces import ArraySpec
from protocol.session import SessionSettings

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = DOC.index(title)
    end = DOC.find("\n## ", start + len(title))
    return DOC[start:] if end < 0 else DOC[start:end]


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```\n(.*?)```", text, flags=re.S)


def test_config_hash_recipe_gives_the_documented_hash() -> None:
    text = section("### `hello.config_hash`")
    canonical = re.search(r"the JSON is `(\{.*?\})`", text).group(1)
    documented = re.search(r"config_hash = ([0-9a-f]{64})", text).group(1)
    rebuilt = json.dumps(json.loads(canonical), sort_keys=True, separators=(",", ":"))
    assert rebuilt == canonical
    assert hashlib.sha256(canonical.encode()).hexdigest() == documented
    assert SessionSettings().config_hash() == documented


def test_the_worked_example_is_built_from_the_documents_values() -> None:
    text = section("### Worked example")
    blocks = code_blocks(text)
    # the map as the document writes it (JSON syntax), then the hex of the frame
    document_map = json.loads(blocks[0])
    documented_hex = "".join(blocks[1].split())
    packed = msgpack.packb(document_map, use_bin_type=True)  # a stock packer, insertion order
    assert packed.hex() == documented_hex
    assert len(packed) == int(re.search(r"these (\d+) bytes", text).group(1))
    msg = decode([bytes.fromhex(documented_hex)])
    assert isinstance(msg, Hello)
    table = spaces_table()
    assert msg == Hello(session_id="example", robot="sim", task="door",
                        observation_space=table[("door", "state")],
                        action_space=table[("door", "action")],
                        config_hash=re.search(r"config_hash = ([0-9a-f]{64})", DOC).group(1),
                        next_seq=0, oldest_seq=0)


def spaces_table() -> dict[tuple[str, str], object]:
    """Parses the table of spaces: (task, "state"|"pixels") -> space, (task, "action") -> spec."""
    out: dict[tuple[str, str], object] = {}
    for row in section("### Spaces").splitlines():
        m = re.match(r"\| `(\w+)` \| (.*?) \| (.*?) \| float32 \((\d+),\) \|$", row)
        if not m:
            continue
        task = m.group(1)
        for mode, cell in (("state", m.group(2)), ("pixels", m.group(3))):
            out[(task, mode)] = {name: ArraySpec(dtype=dtype, shape=tuple(int(d) for d in dims.split(",") if d.strip()))
                                 for name, dtype, dims in re.findall(r"`(\w+)` (\w+) \(([\d, ]+)\)", cell)}
        out[(task, "action")] = ArraySpec(dtype="float32", shape=(int(m.group(4)),))
    return out
