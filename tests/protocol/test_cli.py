"""resetfree-keys and the protocol benchmark's command lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zmq.auth

from protocol import bench, keys


def test_keys_generate_writes_pairs_and_allow_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert keys.main(["generate", str(tmp_path)]) == 0
    for role in keys.ROLES:
        public, secret = zmq.auth.load_certificate(tmp_path / f"{role}.key_secret")
        assert len(public) == 40 and secret is not None
        assert (tmp_path / f"{role}.key_secret").stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in (tmp_path / keys.ALLOW_DIR).iterdir()) == ["operator.key", "runtime.key"]
    assert keys.main(["generate", str(tmp_path)]) == 1  # refuses to overwrite
    assert keys.main(["generate", str(tmp_path), "--force"]) == 0
    keys.server_keys(tmp_path), keys.client_keys(tmp_path)
    with pytest.raises(ValueError, match="secret_key_file"):
        keys.client_keys(tmp_path / "missing")
    with pytest.raises(SystemExit):
        keys.main(["--help"])
    assert "generate" in capsys.readouterr().out


def test_bench_quick_prints_json_last(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--steps", str(bench.BATCH * 20)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"transitions_per_s", "pickle_transitions_per_s", "weights_5mb_p50_ms", "weights_20mb_p50_ms"} <= set(result)
    assert result["transitions_per_s"] > 0 and result["weights_5mb_p50_ms"] > 0
