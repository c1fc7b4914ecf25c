"""The ``efficientvlm`` command line: user mistakes are one error message with exit status 2 (``--debug`` shows the
traceback), and ``push`` checks the Hub token and connection, offline-safe and before loading the model."""

import contextlib
import http.server
import json
import re
import subprocess
import sys
import threading
import time

import pytest
import torch
from huggingface_hub import HfApi, constants

from efficientvlm import EfficientVLMForVisualQuestionAnswering, EfficientVLMImageProcessor, EfficientVLMProcessor, cli
from efficientvlm.hub import commands, publish
from efficientvlm.hub.publish import HubAccessError, check_hub_access
from tests.tiny_models import tiny_config
from tests.utils import make_tiny_tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "vqa"
    torch.manual_seed(0)
    EfficientVLMForVisualQuestionAnswering(tiny_config()).save_pretrained(folder)
    EfficientVLMProcessor(EfficientVLMImageProcessor(size={"height": 32, "width": 32}),
                          make_tiny_tokenizer(folder.parent / "tokenizer")).save_pretrained(folder)
    return folder


@pytest.fixture
def model_never_loaded(monkeypatch):
    def refuse(folder):
        raise AssertionError("the checkpoint was loaded before the Hub was checked")

    monkeypatch.setattr(commands, "load_checkpoint", refuse)


@contextlib.contextmanager
def fake_hub(status: int, body: dict, delay: float = 0.0):
    """A loopback server answering every GET with ``status`` and ``body`` (after ``delay`` seconds)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(delay)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def one_error_line(capsys, prog="efficientvlm push"):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"{prog}: error: ") and lines[0].endswith("(--debug shows the traceback)")
    assert "Traceback" not in captured.err
    return lines[0]


def test_push_offline_is_one_line_before_the_model_is_loaded(checkpoint, capsys, model_never_loaded):
    assert constants.HF_HUB_OFFLINE  # tests/conftest.py
    assert cli.main(["push", str(checkpoint), "org/x"]) == 2
    line = one_error_line(capsys)
    assert "HF_HUB_OFFLINE is set, so nothing can be pushed to https://huggingface.co" in line
    assert "--dry-run DIR" in line


def test_push_without_a_token_is_one_line(checkpoint, capsys, model_never_loaded, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.hf_api.get_token", lambda: None)
    assert cli.main(["push", str(checkpoint), "org/x"]) == 2
    line = one_error_line(capsys)
    assert "No Hugging Face token: log in with `hf auth login`, set HF_TOKEN, or pass --token" in line


def test_push_without_network_is_one_line_naming_the_endpoint(checkpoint, capsys, model_never_loaded, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(publish, "HfApi", lambda token=None: HfApi(endpoint="http://127.0.0.1:1", token="hf_x"))
    assert cli.main(["push", str(checkpoint), "org/x", "--token", "hf_x"]) == 2
    line = one_error_line(capsys)
    assert "Cannot reach http://127.0.0.1:1 (ConnectError" in line and "check the network connection" in line


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (401, {"error": "Invalid credentials"}, "refused the token (401 Unauthorized): it is invalid or expired"),
        (200, {"name": "reader", "auth": {"accessToken": {"role": "read"}}},
         "The token of reader is read-only: pushing needs a write token"),
        (503, {"error": "down"}, "answered HTTP 503 to the token check"),
    ],
)
def test_a_refused_token_is_named_with_the_fix(status, body, message, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with fake_hub(status, body) as endpoint, pytest.raises(HubAccessError, match=re.escape(message)):
        check_hub_access(HfApi(endpoint=endpoint, token="hf_x"))


def test_a_hub_that_does_not_answer_is_given_up_on(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with fake_hub(200, {"name": "late"}, delay=3) as endpoint:
        with pytest.raises(HubAccessError, match=rf"No answer from {re.escape(endpoint)} within 0.3 s"):
            check_hub_access(HfApi(endpoint=endpoint, token="hf_x"), timeout=0.3)


def test_a_write_token_passes(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with fake_hub(200, {"name": "writer", "auth": {"accessToken": {"role": "write"}}}) as endpoint:
        assert check_hub_access(HfApi(endpoint=endpoint, token="hf_x"))["name"] == "writer"


def test_debug_shows_the_traceback(checkpoint, capsys, monkeypatch):
    with pytest.raises(HubAccessError, match="HF_HUB_OFFLINE"):
        cli.main(["--debug", "push", str(checkpoint), "org/x"])
    with pytest.raises(HubAccessError, match="HF_HUB_OFFLINE"):
        cli.main(["push", str(checkpoint), "org/x", "--debug"])
    monkeypatch.setenv("EFFICIENTVLM_DEBUG", "1")
    with pytest.raises(ValueError, match="has no config.json"):
        cli.main(["push", str(checkpoint.parent / "nowhere"), "org/x", "--dry-run", str(checkpoint.parent / "d")])


def test_user_mistakes_exit_2_and_the_console_script_prints_one_line(checkpoint, tmp_path, capsys):
    assert cli.main(["push", str(tmp_path / "nowhere"), "org/x", "--dry-run", str(tmp_path / "d")]) == 2
    assert "nowhere has no config.json: pass a folder written by model.save_pretrained()" in one_error_line(capsys)
    result = subprocess.run([sys.executable, "-m", "efficientvlm.cli", "push", str(checkpoint), "org/x"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("efficientvlm push: error: HF_HUB_OFFLINE is set")
